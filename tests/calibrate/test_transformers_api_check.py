"""calibrate.transformers_runs' up-front check that the installed transformers has every API the adapter calls:
on stand-in module trees with one name or keyword removed, and on the installed transformers with a method
monkeypatched away. A missing API is one line (which API, the version found, the version the adapter was written
for), exit 2, and nothing written."""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import pytest

from calibrate import transformers_runs as tr


def _method(*names: str):
    """A function whose signature names `names` (and **kwargs, as transformers' add_request has)."""
    ns: dict = {}
    exec(f"def f(self, {''.join(n + '=None, ' for n in names)}**kw): pass", ns)  # noqa: S102 - test stand-in
    return ns["f"]


def stand_in(version: str = "5.17.0") -> SimpleNamespace:
    """A module tree with every attribute path and keyword of tr.NEEDED_API."""
    root = SimpleNamespace(__version__=version)
    for path, names in tr.NEEDED_API:
        *parents, leaf = path.split(".")
        obj = root
        for part in parents:
            if not hasattr(obj, part):
                setattr(obj, part, SimpleNamespace())
            obj = getattr(obj, part)
        setattr(obj, leaf, _method(*names))
    return root


def _drop(root: SimpleNamespace, path: str) -> None:
    *parents, leaf = path.split(".")
    obj = root
    for part in parents:
        obj = getattr(obj, part)
    delattr(obj, leaf)


def test_a_complete_stand_in_passes():
    assert tr.missing_api(stand_in()) is None
    tr.check_api(stand_in())


@pytest.mark.parametrize("path", [p for p, _ in tr.NEEDED_API])
def test_each_missing_name_is_named(path):
    t = stand_in()
    _drop(t, path)
    assert tr.missing_api(t) == path


def test_a_keyword_the_adapter_passes_must_be_in_the_signature():
    t = stand_in()
    # record_timestamps renamed: **kwargs would take it silently and no token would be stamped
    t.generation.continuous_batching.ContinuousBatchingManager.add_request = _method(
        "request_id", "max_new_tokens", "eos_token_id"
    )
    assert tr.missing_api(t) == (
        "generation.continuous_batching.ContinuousBatchingManager.add_request(record_timestamps=)"
    )


def test_main_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    t = stand_in("4.56.2")
    _drop(t, "ContinuousBatchingConfig")
    monkeypatch.setattr(tr, "_import_stack", lambda: (None, t))
    out = tmp_path / "out"
    assert tr.main(["--out", str(out), "--quick", "--device", "cpu", "--models", "qwen2.5-0.5b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "error: calibrate.transformers_runs: transformers 4.56.2 has no ContinuousBatchingConfig, "
        "which this adapter calls; it was written for transformers 5.17.0"
    )
    assert not out.exists()


def _installed():
    """The installed transformers: CI installs it (the calibrate extra), so there these must not skip."""
    if os.environ.get("CI"):
        return importlib.import_module("transformers")
    return pytest.importorskip("transformers")


def test_the_installed_transformers_has_what_the_adapter_calls():
    transformers = _installed()
    assert tr.missing_api(transformers) is None, transformers.__version__


def test_the_installed_transformers_without_continuous_batching_is_refused(tmp_path, capsys, monkeypatch):
    transformers = _installed()
    # defined on a mixin GenerationMixin inherits (ContinuousMixin in 5.x): removed where it is defined
    owner = next(c for c in transformers.GenerationMixin.__mro__ if "init_continuous_batching" in vars(c))
    monkeypatch.delattr(owner, "init_continuous_batching")
    out = tmp_path / "out"
    assert tr.main(["--out", str(out), "--quick", "--device", "cpu", "--models", "qwen2.5-0.5b"]) == 2
    err = capsys.readouterr().err
    assert f"transformers {transformers.__version__} has no GenerationMixin.init_continuous_batching" in err
    assert "written for transformers 5.17.0" in err and err.count("\n") == 1
    assert not out.exists()
