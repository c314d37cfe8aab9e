import pytest

from calibrate import profile
from calibrate.detect import base_profile_for, resolve_base
from core.errors import ConfigError
from core.hardware import Efficiencies, OpEfficiency, load_profile

EFF = Efficiencies(
    gemm=OpEfficiency(compute=0.71, memory=0.83, compute_ramp_flops=1.0e9, launch_s=3.0e-6),
    attention_prefill=OpEfficiency(compute=0.33, memory=0.05, compute_ramp_flops=1.1e10),
    attention_decode=OpEfficiency(compute=0.3, memory=0.16, launch_s=1.2e-5),
    elementwise=OpEfficiency(compute=0.1, memory=0.7, launch_s=6.8e-6),
    step_overhead_s=4.4e-4,
    per_sequence_s=7.6e-6,
)


def test_calibrated_profile_round_trips_through_load_profile(tmp_path, monkeypatch):
    base = load_profile("h100-sxm")
    prov = {
        "gpu": "NVIDIA H100 80GB HBM3",
        "torch": "2.11.0",
        "cuda": "13.0",
        "driver": "580.159.04",
        "fit_errors_pct": {"gemm": {"train": {"median_pct": 4.8, "p90_pct": 7.7, "n": 90}}},
        "ceilings": {"copy_bandwidth_gbps": 3022.4, "gemm_bf16_tflops": 792.9},
    }
    prof = profile.calibrated(base, "h100-test", EFF, prov)
    path = profile.write(prof, tmp_path, "NVIDIA H100 SXM5 80GB\nfitted by python -m calibrate")
    assert path.name == "h100-test.yaml" and path.read_text().startswith("# NVIDIA H100")
    back = load_profile(str(path))
    assert back.efficiency == EFF and back.is_calibrated
    assert back.memory_bandwidth_gbps == base.memory_bandwidth_gbps and back.peak_tflops == base.peak_tflops
    assert back.calibration.gpu == "NVIDIA H100 80GB HBM3"
    assert back.calibration.model_extra["ceilings"]["copy_bandwidth_gbps"] == 3022.4
    monkeypatch.setenv("INFERPLAN_PROFILES", str(tmp_path))  # the simulator finds it by name
    assert load_profile("h100-test").efficiency == EFF


def test_unwritable_output_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create the folder"):
        profile.check_writable(blocker / "sub")


@pytest.mark.parametrize(
    "name, base",
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("Tesla T4", "t4"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_gpu_names_map_to_datasheet_profiles(name, base):
    assert base_profile_for(name) == base
    if base:
        assert resolve_base(name, None) == base
        load_profile(base)


def test_unknown_gpu_asks_for_base():
    with pytest.raises(ConfigError, match="--base"):
        resolve_base("NVIDIA GeForce RTX 4090", None)
    assert resolve_base("NVIDIA GeForce RTX 4090", "l4") == "l4"


@pytest.mark.parametrize(
    "file, measured_on, refused",
    [
        ("h100-sxm", "NVIDIA H100 80GB HBM3", None),  # recalibrating the same GPU
        ("h200", "NVIDIA H200", None),
        ("l4", "NVIDIA L4", None),  # a first calibration of a GPU whose profile is transferred
        ("h100-sxm", "cpu", "fitted on the CPU cannot take the name of the shipped h100-sxm profile"),
        ("h100-sxm", "NVIDIA H200", "calibrated on NVIDIA H100 80GB HBM3 (2026-11-23)"),
        ("l4", "NVIDIA A10G", "the NVIDIA L4 24GB profile (transferred calibration"),
        ("mine", "NVIDIA H100 80GB HBM3", None),  # a calibration of this GPU under another name
        (
            "mine",
            "NVIDIA H200",
            "mine.yaml: holds the NVIDIA H100 SXM5 80GB profile calibrated on NVIDIA H100",
        ),
        ("junk", "cpu", "junk.yaml: holds not a profile this tool can read"),
    ],
)
def test_a_fit_writes_over_a_profile_of_its_own_device_only(tmp_path, file, measured_on, refused):
    shipped = profile.PROFILE_DIR
    for name, src in (("h100-sxm", "h100-sxm"), ("h200", "h200"), ("l4", "l4"), ("mine", "h100-sxm")):
        (tmp_path / f"{name}.yaml").write_bytes((shipped / f"{src}.yaml").read_bytes())
    (tmp_path / "junk.yaml").write_bytes(b"\xff\x00 not yaml")
    path = tmp_path / f"{file}.yaml"
    if refused is None:
        profile.check_overwrite(path, measured_on)
    else:
        with pytest.raises(ConfigError, match=r"--name|--force") as e:
            profile.check_overwrite(path, measured_on)
        assert refused in str(e.value) and "--force" in str(e.value)
    profile.check_overwrite(path, measured_on, force=True)


def test_a_profile_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    base = load_profile("h100-sxm").model_copy(update={"name": "mine"})
    path = profile.write(base, tmp_path, "first")
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(profile.os, "replace", full_disk)
    with pytest.raises(ConfigError, match="No space left on device"):
        profile.write(base, tmp_path, "second")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["mine.yaml"]
