"""Every bad input to `python -m calibrate` is one line on stderr and exit code 2, before any sweep starts."""

import json
import shutil
from pathlib import Path

import pytest

from calibrate.__main__ import main
from calibrate.measurements import Record, Store, identity
from calibrate.plan import Point
from core.hardware import PROFILE_DIR
from core.model_spec import load_model


def gemm(m: int) -> Record:
    p = Point("gemm", {"m": m, "k": 64, "n": 64, "dtype": "bf16"})
    return Record(p.key, p.kind, p.params, 1e-3)


def store(folder: Path, ident: dict, n: int = 3, **provenance) -> Path:
    """A work dir holding `n` points measured as `ident`."""
    s = Store.open(folder / "measurements.jsonl", ident, provenance=provenance)
    for m in range(1, n + 1):
        s.add(gemm(m))
    return folder


TORCH = {"torch": "2.13.0+cpu"}  # fixed: no row compares a store's torch version with this machine's


@pytest.fixture
def ws(tmp_path, tiny_config):
    """The files and work dirs the rows refer to (tiny_config is tmp_path/tiny.json)."""
    tiny = load_model(str(tmp_path / "tiny.json"))
    cpu = identity("cpu", "cpu", tiny, TORCH)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00name: x\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "jsonl_is_dir" / "measurements.jsonl").mkdir(parents=True)
    (tmp_path / "only_meta").mkdir()
    Store.open(tmp_path / "only_meta" / "measurements.jsonl", cpu, provenance={"base": "cpu"})
    with (tmp_path / "only_meta" / "measurements.jsonl").open("a") as f:
        f.write(json.dumps({"key": "gemm:{}", "kind": "gemm", "params": [1], "seconds": 1e-3}) + "\n")
    (tmp_path / "deep_line").mkdir()  # a damaged line nested past Python's recursion limit
    Store.open(tmp_path / "deep_line" / "measurements.jsonl", cpu, provenance={"base": "cpu"})
    with (tmp_path / "deep_line" / "measurements.jsonl").open("a") as f:
        f.write('{"key": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    store(tmp_path / "cpu_run", cpu, base="cpu", model_arg=str(tmp_path / "tiny.json"))
    with (tmp_path / "cpu_run" / "measurements.jsonl").open("ab") as f:
        f.write(
            b'{"key": "\xff\xfe"}\n'
        )  # a damaged line: counted later, never a second line before a refusal
    qwen = identity("cpu", "cpu", load_model("qwen2.5-0.5b"), TORCH)
    store(tmp_path / "qwen_run", qwen, n=18, base="cpu")
    shutil.copytree(tmp_path / "qwen_run", tmp_path / "qwen_damaged")
    lines = (tmp_path / "qwen_damaged" / "measurements.jsonl").read_text().splitlines()
    (tmp_path / "qwen_damaged" / "measurements.jsonl").write_text(
        "\n".join([lines[0][:30], *lines[1:]]) + "\n"
    )
    a100 = identity("NVIDIA A100-SXM4-80GB", "cuda", load_model("llama-3.1-8b"), {"torch": "2.11.0"})
    store(tmp_path / "a100_run", a100, base="h100-sxm")
    (tmp_path / "stored").mkdir()
    shutil.copy(PROFILE_DIR.parent / "calibration_runs" / "h100-sxm" / "validate.jsonl", tmp_path / "stored")
    (tmp_path / "profiles").mkdir()
    shutil.copy(PROFILE_DIR / "h100-sxm.yaml", tmp_path / "profiles")
    shutil.copy(PROFILE_DIR / "h100-sxm.yaml", tmp_path / "profiles" / "mine.yaml")
    return tmp_path


CPU = ["--device", "cpu", "--model", "{tiny}", "--work-dir", "{t}/run", "--out-dir", "{t}/out"]

# (arguments, what the one line says): each with exit code 2
ROWS = [
    # calibration does not sweep MLA: refused before any sweep starts
    (
        ["--device", "cpu", "--model", "deepseek-v3", "--work-dir", "{t}/run"],
        "--model deepseek-v3: multi-head latent attention (MLA, DeepSeek) is not swept by calibration",
    ),
    (
        ["--device", "cpu", "--model", "deepseek-v2-lite", "--work-dir", "{t}/run"],
        "--model deepseek-v2-lite: multi-head latent attention",
    ),
    (
        ["validate", "h100-sxm", "--device", "cpu", "--model", "deepseek-v3", "--work-dir", "{t}/run"],
        "(MLA, DeepSeek) is not swept by calibration",
    ),
    # a CPU fit never takes a GPU profile's name, nor a name that is a path
    (
        [*CPU, "--name", "h100-sxm"],
        "--name h100-sxm: a profile fitted on the CPU cannot take the name of the shipped h100-sxm profile "
        "(the NVIDIA H100 SXM5 80GB profile calibrated on NVIDIA H100 80GB HBM3",
    ),
    (
        ["fit", "{t}/cpu_run", "--name", "h100-sxm", "--out-dir", "{t}/out"],
        "a profile fitted on the CPU cannot take the name of the shipped h100-sxm profile",
    ),
    ([*CPU, "--name", "../evil"], "--name '../evil': not a profile name"),
    (["fit", "{t}/cpu_run", "--name", "x.yaml"], "--name 'x.yaml': not a profile name"),
    # a calibrated profile of another device is not overwritten
    (
        ["fit", "{t}/a100_run", "--out-dir", "{t}/profiles"],
        "--name h100-sxm: a profile fitted on NVIDIA A100-SXM4-80GB cannot take the name of the shipped h100-sxm",
    ),
    (
        ["fit", "{t}/cpu_run", "--name", "mine", "--out-dir", "{t}/profiles"],
        "profiles/mine.yaml: holds the NVIDIA H100 SXM5 80GB profile calibrated on NVIDIA H100 80GB HBM3 "
        "(2026-11-23), and this fit is from cpu; pass another --name",
    ),
    # stored measurements of another model are never reused
    (
        [*CPU[:4], "--model", "mistral-7b", "--work-dir", "{t}/qwen_run"],
        "holds measurements of qwen2.5-0.5b on cpu",
    ),
    (
        [*CPU[:4], "--model", "mistral-7b", "--work-dir", "{t}/qwen_damaged"],
        "18 stored measurements of another GPU, model or software",
    ),
    (["fit", "{t}/qwen_damaged"], "the line naming what was measured (GPU, model) is missing or damaged"),
    (["fit", "{t}/cpu_run", "--model", "qwen2.5-0.5b"], "--model qwen2.5-0.5b: not the model measured in"),
    # folders and files where the other is expected
    ([*CPU[:5], "{t}/a_file", *CPU[6:]], "--work-dir '{t}/a_file': is a file, not a folder"),
    ([*CPU[:5], "{t}/a_file/sub", *CPU[6:]], "--work-dir '{t}/a_file/sub': cannot create the folder"),
    ([*CPU[:5], "{t}/jsonl_is_dir", *CPU[6:]], "measurements.jsonl: cannot read or write measurements"),
    ([*CPU[:-1], "{t}/a_file"], "--out-dir '{t}/a_file': is a file, not a folder"),
    (["fit", "{t}/a_file"], "{t}/a_file: is a file, not a work dir"),
    (["fit", "{t}/cpu_run", "--out-dir", "{t}/a_file"], "--out-dir '{t}/a_file': is a file, not a folder"),
    (["fit", "{t}/nowhere"], "measurements.jsonl does not exist"),
    (["fit", "{t}/jsonl_is_dir"], "cannot read or write measurements"),
    (
        ["fit", "{t}/deep_line"],
        "no measurement to fit (0 points failed or ran out of memory, 1 lines damaged)",
    ),
    (
        ["fit", "{t}/only_meta"],
        "no measurement to fit (0 points failed or ran out of memory, 1 lines damaged)",
    ),
    (
        ["validate", "{t}/binary.yaml", "--stored"],
        "{t}/binary.yaml: is a binary file, not a profile; give the YAML text file",
    ),
    (["validate", "{t}/list.yaml", "--stored"], "a profile must be a YAML mapping"),
    (["validate", "h100-sxm", "--stored", "--out", "{t}"], "--out '{t}': is a folder"),
    (
        ["validate", "h100-sxm", "--stored", "--work-dir", "{t}/stored", "--out", "/dev/full"],
        "--out '/dev/full': cannot write the table",
    ),
    # flags
    ([*CPU, "--redo", ","], "--redo ',': not a measurement kind"),
    ([*CPU, "--redo", "elementwize"], "--redo elementwize: not a measurement kind"),
    ([*CPU, "--redo", "gemm:m1"], "--redo gemm:m1: filters are PARAM=VALUE"),
    ([*CPU, "--redo", "gemz:m=1"], "--redo gemz: not a measurement kind"),
    ([*CPU[2:], "--device", "xpu"], "--device 'xpu': use cuda or cpu"),
    (["--bogus"], "python -m calibrate: unrecognized arguments: --bogus; see python -m calibrate --help"),
    (["fit"], "python -m calibrate fit: the following arguments are required: work_dir"),
    (["validate", "h100-sxm", "--stored", "--work-dir"], "--work-dir: expected one argument"),
]


@pytest.mark.parametrize("args, says", ROWS, ids=[f"{i}:{' '.join(r[0][:2])}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_exit_2(ws, args, says, capsys, monkeypatch):
    monkeypatch.chdir(ws)  # the default --out-dir (./hardware_profiles) is the test's, never the repo's
    fill = {"t": str(ws), "tiny": str(ws / "tiny.json")}
    code = main([a.format(**fill) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and says.format(**fill) in lines[0], lines[0]
    assert not (ws / "run" / "measurements.jsonl").exists()  # refused before any sweep started


def test_a_refused_fit_leaves_the_shipped_profile_as_it_was(ws, capsys, monkeypatch):
    shipped = (PROFILE_DIR / "h100-sxm.yaml").read_bytes()
    copy = (ws / "profiles" / "h100-sxm.yaml").read_bytes()
    monkeypatch.chdir(ws)
    (ws / "hardware_profiles").mkdir()
    for out in ("hardware_profiles", str(ws / "profiles")):
        assert main(["fit", str(ws / "cpu_run"), "--name", "h100-sxm", "--out-dir", out]) == 2
        assert main(["fit", str(ws / "a100_run"), "--out-dir", out]) == 2
    assert (PROFILE_DIR / "h100-sxm.yaml").read_bytes() == shipped
    assert (ws / "profiles" / "h100-sxm.yaml").read_bytes() == copy
    assert not (ws / "hardware_profiles" / "h100-sxm.yaml").exists()
