"""Hardware profiles: every shipped YAML validates, its figures are sane and sourced, bad input fails in one line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from core.gpu_transfer import transfer
from core.hardware import PROFILE_DIR, HardwareProfile, load_profile, profile_names, read_profile

SHIPPED = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
EXPECTED = {
    "t4",
    "l4",
    "a10g",
    "a100-40gb",
    "a100-80gb-sxm",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "b200",
    "mi300x",
}


@pytest.fixture(scope="module")
def profiles() -> dict[str, HardwareProfile]:
    return {name: read_profile(PROFILE_DIR / f"{name}.yaml") for name in SHIPPED}


def template() -> dict:
    return yaml.safe_load((PROFILE_DIR / "h100-sxm.yaml").read_text())


def write(tmp_path: Path, data: dict | str, name: str = "gpu.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def one_line_error(path: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ shipped profiles
def test_expected_profiles_ship():
    assert set(SHIPPED) >= EXPECTED
    assert set(profile_names()) >= EXPECTED


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_loads_by_name_and_matches_its_file(name):
    p = load_profile(name)
    assert p.name == name
    assert p.display_name
    assert p.peak_flops("bf16") > 0 and p.memory_bytes > 0 and p.memory_bandwidth > 0


def test_memory_bandwidth_ordering(profiles):
    bw = {n: p.memory_bandwidth for n, p in profiles.items()}
    assert bw["b200"] > bw["h200"] > bw["h100-sxm"] > bw["a100-80gb-sxm"] > bw["a100-40gb"] > bw["a10g"]
    assert bw["a10g"] > bw["l4"] and bw["a10g"] > bw["t4"]
    assert bw["h100-sxm"] > bw["h100-pcie"]


def test_16bit_compute_ordering(profiles):
    f = {n: p.peak_flops("bf16") for n, p in profiles.items()}
    assert f["b200"] > f["h100-sxm"] > f["a100-80gb-sxm"] > f["l4"] > f["t4"]
    assert f["h100-sxm"] > f["h100-pcie"] > f["a100-40gb"]
    assert f["h200"] == f["h100-sxm"]  # same Hopper compute, more and faster memory
    assert f["a100-40gb"] == f["a100-80gb-sxm"]
    assert f["t4"] == profiles["t4"].peak_flops("fp16")


def test_memory_capacity(profiles):
    gib = {n: p.memory_gib for n, p in profiles.items()}
    assert (
        gib["mi300x"] > gib["b200"] > gib["h200"] > gib["h100-sxm"] == gib["a100-80gb-sxm"] > gib["a100-40gb"]
    )
    assert profiles["a100-80gb-sxm"].memory_bytes == 80 * 2**30
    assert profiles["h200"].memory_bytes == 141 * 2**30
    assert profiles["t4"].memory_bandwidth == 320e9


def test_missing_units_fall_back(profiles):
    t4, a100, a10g, h100 = profiles["t4"], profiles["a100-80gb-sxm"], profiles["a10g"], profiles["h100-sxm"]
    # T4 (Turing): no bf16, no fp8 units; both run at the fp16 rate
    assert t4.peak_tflops.bf16 is None and t4.peak_tflops.fp8 is None
    assert not t4.native_dtype("bf16") and t4.native_dtype("fp16")
    assert t4.peak_flops("bf16") == pytest.approx(65e12)
    assert t4.peak_flops("fp8") == pytest.approx(65e12)
    # Ampere: no fp8; falls back to 16-bit
    for p in (a100, a10g, profiles["a100-40gb"]):
        assert p.peak_tflops.fp8 is None and not p.native_dtype("fp8")
        assert p.peak_flops("fp8") == p.peak_flops("bf16")
    assert a100.peak_flops("fp8") == pytest.approx(312e12)
    # Hopper has fp8 at twice the 16-bit rate
    assert h100.native_dtype("fp8") and h100.peak_flops("fp8") == pytest.approx(
        2 * h100.peak_flops("bf16"), rel=1e-3
    )


def test_dense_rates_not_sparse(profiles):
    # sparse figures are 2x dense; datasheet dense 16-bit rates (TFLOP/s) must not be doubled
    dense = {
        "t4": 65,
        "l4": 121,
        "a10g": 70,
        "a100-80gb-sxm": 312,
        "h100-pcie": 756,
        "h200": 989.4,
        "b200": 2250,
    }
    for name, tflops in dense.items():
        assert profiles[name].peak_flops("fp16") == pytest.approx(tflops * 1e12, rel=0.01), name
    assert profiles["mi300x"].peak_flops("bf16") == pytest.approx(1307.4e12, rel=0.01)


def test_interconnect_is_unidirectional(profiles):
    ic = {n: p.interconnect.bandwidth_gbps for n, p in profiles.items()}
    assert ic["h100-sxm"] == ic["h200"] == 450  # NVLink 4: 900 GB/s bidirectional
    assert ic["a100-80gb-sxm"] == ic["a100-40gb"] == 300  # NVLink 3: 600 GB/s bidirectional
    assert ic["b200"] == 900  # NVLink 5: 1.8 TB/s bidirectional
    for name in ("t4", "l4", "a10g", "h100-pcie"):  # PCIe-only cards use their PCIe link
        assert ic[name] == profiles[name].pcie_bandwidth_gbps, name
    assert profiles["mi300x"].vendor == "amd"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_figure_has_a_source(name, profiles):
    p = profiles[name]
    for field in (
        "memory_gib",
        "memory_bandwidth_gbps",
        "peak_tflops",
        "interconnect",
        "pcie_bandwidth_gbps",
    ):
        assert p.sources.get(field, "").strip(), f"{name}: no source for {field}"
    if p.tdp_w is not None:
        assert p.sources.get("tdp_w", "").strip(), f"{name}: no source for tdp_w"
    assert p.price.usd_per_hour > 0
    assert any(ch.isdigit() for ch in p.price.source), f"{name}: price source needs its year"
    assert len(p.price.source) > 20


CALIBRATED = {"h100-sxm", "h200"}  # measured with python -m calibrate on those GPUs


@pytest.mark.parametrize("name", sorted(set(SHIPPED) - CALIBRATED))
def test_datasheet_profiles_say_their_efficiencies_are_transferred(name, profiles):
    p = profiles[name]
    assert p.calibration is not None and p.calibration.status == "transferred" and p.calibration.notes
    assert not p.is_calibrated
    header = (PROFILE_DIR / f"{name}.yaml").read_text()
    assert (
        "carried to this GPU by\n# core/gpu_transfer.py's rule" in header and "not measured on it" in header
    )


@pytest.mark.parametrize("name", sorted(CALIBRATED))
def test_calibrated_profiles_carry_their_provenance(name, profiles):
    p = profiles[name]
    c = p.calibration
    assert p.is_calibrated and c.status == "measured" and c.date and name.split("-")[0].upper() in c.gpu
    extra = c.model_extra or {}
    assert extra["measurements"]["ok"] > 100 and extra["measurements"]["error"] == 0
    step = extra["fit_errors_pct"]["step"]
    assert step["holdout"]["median_pct"] < 5.0
    assert 0.5 < extra["ceilings"]["copy_fraction_of_datasheet"] <= 1.0


def test_transferred_profiles_are_the_h100_calibration_carried_by_the_rule(profiles):
    """The shipped files hold exactly what core/gpu_transfer.py gives from today's h100-sxm profile (rewrite them
    with python benchmarks/gpu_transfer.py --write-profiles after a recalibration)."""
    h100 = profiles["h100-sxm"]
    for name in ("t4", "l4", "a10g", "a100-40gb", "a100-80gb-sxm", "h100-pcie", "b200", "mi300x"):
        p = profiles[name]
        assert p.efficiency == transfer(h100, p), name
        assert p.calibration.source_profile == "h100-sxm"
        assert p.sustained is not None and p.sources.get("sustained"), name
        # no FLOP-count ramps on a GPU they were not fitted on
        assert all(getattr(p.efficiency, g).compute_ramp_flops == 0 for g in ("gemm", "attention_prefill")), (
            name
        )


# ------------------------------------------------------------------ bad input
def test_unknown_gpu_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        load_profile("h1000")
    msg = str(err.value)
    assert "'h1000'" in msg and "h100-sxm" in msg and "t4" in msg and "\n" not in msg


def test_missing_yaml_path():
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile("/nonexistent/gpu.yaml")


def test_temp_profile_loads_by_path(tmp_path):
    data = template()
    data["name"] = "my-gpu"
    p = load_profile(write(tmp_path, data))
    assert p.name == "my-gpu" and p.peak_flops("bf16") == pytest.approx(989.4e12)


def test_missing_field(tmp_path):
    data = template()
    del data["memory_bandwidth_gbps"]
    msg = one_line_error(write(tmp_path, data))
    assert "memory_bandwidth_gbps" in msg and "missing" in msg


def test_efficiency_above_one(tmp_path):
    data = template()
    data["efficiency"]["gemm"]["compute"] = 1.2
    msg = one_line_error(write(tmp_path, data))
    assert "efficiency.gemm.compute" in msg and "1.2" in msg


def test_unknown_extra_field(tmp_path):
    data = template()
    data["memory_gb"] = 80
    msg = one_line_error(write(tmp_path, data))
    assert "memory_gb" in msg and "unknown field" in msg


def test_unknown_nested_field(tmp_path):
    data = template()
    data["peak_tflops"]["fp4"] = 4000
    msg = one_line_error(write(tmp_path, data))
    assert "peak_tflops.fp4" in msg and "unknown field" in msg


def test_invalid_yaml(tmp_path):
    msg = one_line_error(write(tmp_path, "name: x\n  bad: [1,\n"))
    assert "not valid YAML" in msg


def test_yaml_that_is_not_a_mapping(tmp_path):
    msg = one_line_error(write(tmp_path, "- just\n- a list\n"))
    assert "mapping" in msg


def test_no_16bit_rate(tmp_path):
    data = copy.deepcopy(template())
    data["peak_tflops"] = {"fp32": 67, "fp8": 1978.9}
    msg = one_line_error(write(tmp_path, data))
    assert msg.split(": ", 1)[1].startswith("peak_tflops:") and "fp16 or bf16" in msg


def test_profile_dir_from_environment(tmp_path, monkeypatch):
    data = template()
    data["name"] = "lab-gpu"
    write(tmp_path, data, "lab-gpu.yaml")
    monkeypatch.setenv("INFERPLAN_PROFILES", str(tmp_path))
    assert "lab-gpu" in profile_names()
    assert load_profile("LAB-GPU").name == "lab-gpu"


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_figure(tmp_path, value):
    data = yaml.safe_dump(template(), sort_keys=False)
    data = data.replace("memory_bandwidth_gbps: ", f"memory_bandwidth_gbps: {value} #", 1)
    msg = one_line_error(write(tmp_path, data))
    assert "memory_bandwidth_gbps" in msg and "finite" in msg
