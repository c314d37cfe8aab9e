"""Write a calibrated profile: the base datasheet profile with fitted efficiencies and provenance."""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

import yaml

from calibrate.detect import base_profile_for
from core.errors import ConfigError
from core.hardware import (
    PROFILE_DIR,  # the shipped profiles: a CPU fit never takes one of their names
    Calibration,
    Efficiencies,
    HardwareProfile,
    Interconnect,
    PeakTflops,
    Price,
    load_profile,
    read_profile,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_writable(folder: Path, flag: str = "--out-dir") -> Path:
    """The folder, created if needed; one clear line naming `flag` if it cannot be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {str(folder)!r}: is a file, not a folder; pass {flag} with a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{flag} {str(folder)!r}: cannot create the folder ({e.strerror or e}); pass {flag} with a folder you can write"
        ) from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            f"{flag} {str(folder)!r}: the folder is not writable; pass {flag} with a folder you can write"
        )
    return folder


def check_name(name: str) -> str:
    """A profile name is a file name in the profiles folder: letters, digits, '.', '_', '-', no path."""
    if not NAME.fullmatch(name) or name.lower().endswith((".yaml", ".yml")):
        raise ConfigError(
            f"--name {name!r}: not a profile name; use letters, digits, '.', '_' and '-' only, "
            "without a folder or .yaml (e.g. --name h100-mine)"
        )
    return name


def read(name_or_path: str, flag: str = "profile") -> HardwareProfile:
    """load_profile, with files that are not text or not files as one line (they raise otherwise)."""
    try:
        return load_profile(name_or_path)
    except (UnicodeDecodeError, OSError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or str(e))
        raise ConfigError(
            f"{flag} {name_or_path!r}: cannot read it ({why}); give a profile name or a .yaml file"
        ) from None


def _holds(path: Path) -> tuple[HardwareProfile | None, str]:
    """The profile a file holds and a phrase saying what it is, for refusals."""
    try:
        prof = read_profile(path)
    except (ConfigError, UnicodeDecodeError, OSError) as e:
        return None, f"not a profile this tool can read ({str(e)[:80]})"
    cal = prof.calibration
    if cal is None:
        return prof, f"the {prof.display_name} profile (datasheet figures)"
    if cal.status == "measured":
        return prof, f"the {prof.display_name} profile calibrated on {cal.gpu or '?'} ({cal.date})"
    return prof, f"the {prof.display_name} profile ({cal.status} calibration, {cal.date})"


def _same_device(prof: HardwareProfile, measured_on: str) -> bool:
    """Whether a fit on `measured_on` may replace `prof`: its calibration was measured on that very GPU, or it is
    the datasheet (or transferred) profile that GPU's name maps to (a first calibration of that GPU)."""
    cal = prof.calibration
    if cal is not None and cal.status == "measured":
        return cal.gpu == measured_on
    return base_profile_for(measured_on) == prof.name


def check_overwrite(path: Path, measured_on: str, force: bool = False) -> None:
    """Refuse (one line) to write a fit on `measured_on` over a profile of another device, or under the name of
    a shipped profile of another device (it would stand in for that GPU in every forecast)."""
    if force:
        return
    name = path.stem
    shipped = PROFILE_DIR / f"{name}.yaml"
    if shipped.exists() and shipped.resolve() != path.resolve():
        prof, what = _holds(shipped)
        if prof is None or not _same_device(prof, measured_on):
            fitted_on = "the CPU" if measured_on == "cpu" else measured_on
            raise ConfigError(
                f"--name {name}: a profile fitted on {fitted_on} cannot take the name of the shipped {name} profile "
                f"({what}), which it would stand in for in every forecast; pass another --name, e.g. "
                f"--name {_slug(measured_on)}, or --force"
            )
    if not path.exists():
        return
    prof, what = _holds(path)
    if prof is None or not _same_device(prof, measured_on):
        raise ConfigError(
            f"{path}: holds {what}, and this fit is from {measured_on}; pass another --name, e.g. "
            f"--name {_slug(measured_on)}, or --force to replace it"
        )


def _slug(gpu: str) -> str:
    """A profile name made of a device name: 'NVIDIA A100-SXM4-80GB' -> 'nvidia-a100-sxm4-80gb'."""
    return re.sub(r"[^a-z0-9.]+", "-", gpu.lower()).strip("-.") or "my-gpu"


def cpu_base(
    copy_bytes_per_s: float, gemm_flops_per_s: float, efficiency: Efficiencies, memory_bytes: float
) -> HardwareProfile:
    """A stand-in datasheet for a CPU run: the measured ceilings play the datasheet's part."""
    tflops = gemm_flops_per_s / 1e12
    return HardwareProfile(
        name="cpu",
        display_name="CPU (measured ceilings, for tests)",
        vendor="other",
        memory_gib=memory_bytes / 2**30,
        memory_bandwidth_gbps=copy_bytes_per_s / 1e9,
        peak_tflops=PeakTflops(fp32=tflops, bf16=tflops, fp16=tflops),
        interconnect=Interconnect(kind="none", bandwidth_gbps=1.0, latency_us=0.0),
        pcie_bandwidth_gbps=1.0,
        price=Price(usd_per_hour=0.0, source="not priced"),
        efficiency=efficiency,
        sources={"all": "measured by python -m calibrate --device cpu (copy and GEMM ceilings)"},
    )


def calibrated(
    base: HardwareProfile, name: str, efficiency: Efficiencies, provenance: dict
) -> HardwareProfile:
    """The base profile under `name`, its efficiencies replaced and a measured calibration block added."""
    today = _dt.date.today().isoformat()
    cal = Calibration(
        status="measured",
        date=provenance.pop("date", today),
        gpu=provenance.pop("gpu", ""),
        notes=provenance.pop("notes", ""),
        **provenance,
    )
    sources = dict(base.sources)
    sources["efficiency"] = (
        f"fitted by python -m calibrate on {cal.gpu or 'this device'} ({cal.date}); "
        "fit errors and provenance under calibration"
    )
    return base.model_copy(
        update={"name": name, "efficiency": efficiency, "calibration": cal, "sources": sources}
    )


def write(profile: HardwareProfile, folder: Path, header: str = "") -> Path:
    """Write `folder/NAME.yaml` (comment header, then the fields in declaration order) atomically: a temporary
    file renamed over the old one, so an interruption or a full disk leaves the old profile whole."""
    folder = check_writable(folder)
    path = folder / f"{profile.name}.yaml"
    data = profile.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump(data, sort_keys=False, width=120, allow_unicode=True)
    head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(head + body, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"{path}: cannot write the profile ({e.strerror or e}); pass --out-dir with a folder you can write"
        ) from None
    return path
