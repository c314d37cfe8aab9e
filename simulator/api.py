"""The planner's public Python API in one place: what the app, notebooks and scripts call.

Scenarios go in as plain mappings (what a YAML file holds); forecasts, searches and reports come out.
"""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
from pathlib import Path

import yaml

from core.hardware import load_profile, profile_names, provenance
from core.model_spec import catalogue_names, load_model, spec_from_config
from simulator.comparison import break_even, differences, table
from simulator.presets import WORKLOADS
from simulator.results import write_results
from simulator.scenario import DEFAULT_SCENARIO, Scenario, parse_scenario
from simulator.search import (
    LoadCurve,
    SearchResult,
    SearchSpec,
    configured,
    get_field,
    latency_vs_load,
    max_sustainable_rate,
    parse_spec,
    run_search,
    set_field,
    with_rate,
)
from simulator.simulation import Forecast, simulate

__all__ = [
    "DEFAULT_SCENARIO",
    "WORKLOADS",
    "Forecast",
    "LoadCurve",
    "Scenario",
    "SearchResult",
    "SearchSpec",
    "break_even",
    "catalogue_names",
    "configured",
    "differences",
    "forecast",
    "get_field",
    "latency_vs_load",
    "load_model",
    "load_profile",
    "max_sustainable_rate",
    "parse_scenario",
    "parse_spec",
    "portable",
    "profile_names",
    "provenance",
    "result_files",
    "run_search",
    "scenario_yaml",
    "set_field",
    "simulate",
    "spec_from_config",
    "table",
    "with_rate",
]


def forecast(data: dict, source: str = "scenario") -> Forecast:
    """Validate a scenario mapping and simulate it (ConfigError, one line, for a mistake)."""
    return simulate(parse_scenario(data, source))


def scenario_yaml(scenario: Scenario | dict) -> str:
    """The scenario as the YAML a user saves and reruns with `python -m simulator run`."""
    sc = scenario if isinstance(scenario, Scenario) else parse_scenario(scenario)
    return yaml.safe_dump(sc.model_dump(mode="json", exclude_none=True), sort_keys=False)


def result_files(f: Forecast) -> dict[str, bytes]:
    """The files `python -m simulator run` writes (scenario.yaml, summary.json, requests.csv, timeline.csv)."""
    with tempfile.TemporaryDirectory() as d:
        write_results(f, d)
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


def portable(f: Forecast) -> Forecast:
    """The forecast without live simulation objects (SimPy processes), so it can be cached or sent elsewhere."""
    drop = {}
    for fld in dataclasses.fields(f):
        try:
            pickle.dumps(getattr(f, fld.name))
        except (TypeError, AttributeError, pickle.PicklingError):
            drop[fld.name] = None
    return dataclasses.replace(f, **drop) if drop else f
