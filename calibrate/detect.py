"""What GPU this is, read through NVML (pynvml), and which datasheet profile it starts from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.errors import ConfigError
from core.hardware import profile_names

# NVML device name (lower case) → base profile, first match wins. Names as NVML reports them,
# e.g. 'NVIDIA H100 80GB HBM3' (SXM5), 'NVIDIA H100 PCIe', 'NVIDIA H200', 'NVIDIA A100-SXM4-80GB'.
NAME_RULES: list[tuple[tuple[str, ...], str]] = [
    (("h200",), "h200"),
    (("h100", "pcie"), "h100-pcie"),
    (("h100", "nvl"), "h100-pcie"),
    (("h100",), "h100-sxm"),
    (("b200",), "b200"),
    (("a100", "80gb"), "a100-80gb-sxm"),
    (("a100",), "a100-40gb"),
    (("a10g",), "a10g"),
    (("l4",), "l4"),
    (("t4",), "t4"),
    (("mi300x",), "mi300x"),
]


@dataclass
class GpuInfo:
    """One GPU as NVML describes it (None where NVML does not say)."""

    name: str
    memory_bytes: int | None = None
    sm_clock_max_mhz: int | None = None
    memory_clock_max_mhz: int | None = None
    memory_bus_width_bits: int | None = None
    power_limit_w: float | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    nvlink_links: int = 0
    driver: str = ""
    count: int = 1
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}


def base_profile_for(gpu_name: str) -> str | None:
    """The datasheet profile name for an NVML device name, or None if none matches."""
    low = gpu_name.lower()
    for words, name in NAME_RULES:
        if all(w in low for w in words):
            return name
    return None


def resolve_base(gpu_name: str, base: str | None) -> str:
    """--base if given, else the profile the GPU's name maps to; one clear line when neither works."""
    if base:
        return base
    name = base_profile_for(gpu_name)
    if name is None or name not in profile_names():
        raise ConfigError(
            f"no datasheet profile matches GPU {gpu_name!r}; pass --base with one of {', '.join(profile_names())}"
        )
    return name


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # NVML raises for fields a board does not report
        return None


def detect_nvml() -> GpuInfo | None:
    """The first GPU through NVML, or None when pynvml or the driver is missing or no GPU is there."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count < 1:
            return None
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else str(name)
        driver = _try(pynvml.nvmlSystemGetDriverVersion) or ""
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        mem = _try(pynvml.nvmlDeviceGetMemoryInfo, h)
        power = _try(pynvml.nvmlDeviceGetPowerManagementLimit, h)
        links = 0
        for i in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
            state = _try(pynvml.nvmlDeviceGetNvLinkState, h, i)
            if state is None:
                break
            links += int(bool(state))
        return GpuInfo(
            name=name,
            memory_bytes=int(mem.total) if mem is not None else None,
            sm_clock_max_mhz=_try(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
            memory_clock_max_mhz=_try(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
            memory_bus_width_bits=_try(getattr(pynvml, "nvmlDeviceGetMemoryBusWidth", lambda _h: None), h),
            power_limit_w=power / 1000.0 if power else None,
            pcie_gen=_try(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
            pcie_width=_try(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
            nvlink_links=links,
            driver=driver,
            count=count,
        )
    finally:
        _try(pynvml.nvmlShutdown)


def detect_torch() -> GpuInfo | None:
    """Fallback when NVML is unavailable: what torch.cuda reports."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return GpuInfo(
        name=p.name,
        memory_bytes=int(p.total_memory),
        count=torch.cuda.device_count(),
        extra={"multiprocessors": p.multi_processor_count},
    )


def detect() -> GpuInfo | None:
    return detect_nvml() or detect_torch()


def software_versions() -> dict:
    """torch and CUDA versions (empty when torch is missing)."""
    try:
        import torch
    except ImportError:
        return {}
    out = {"torch": torch.__version__}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out
