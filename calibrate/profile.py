"""Write a calibrated profile: the base datasheet profile with fitted efficiencies and provenance."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import yaml

from simulator.errors import ConfigError
from simulator.hardware import (
    Calibration,
    Efficiencies,
    HardwareProfile,
    Interconnect,
    PeakTflops,
    Price,
)


def check_writable(folder: Path) -> Path:
    """The folder, created if needed; one clear line if it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {str(folder)!r}: {e.strerror or e}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(
            f"output folder {str(folder)!r} is not writable; pass --out-dir with a folder you can write"
        )
    return folder


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
    """Write `folder/NAME.yaml` (comment header, then the fields in declaration order)."""
    folder = check_writable(folder)
    path = folder / f"{profile.name}.yaml"
    data = profile.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump(data, sort_keys=False, width=120, allow_unicode=True)
    head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    try:
        path.write_text(head + body)
    except OSError as e:
        raise ConfigError(f"cannot write profile {str(path)!r}: {e.strerror or e}") from None
    return path


def base_header(path: Path) -> str:
    """The leading comment block of an existing profile (its datasheet citations), without '# '."""
    if not path.exists():
        return ""
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        out.append(line[1:].lstrip(" ") if line.startswith("# ") or line == "#" else line[1:])
    return "\n".join(out)
