"""The normalized kernel record (attention, linear and MoE kernels, compile and CUDA-graph mode, KV cache,
speculative method) that a kernel snapshot stores, and the difference between two records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class KernelRecord:
    """What one engine start selected, with canonical tokens only (no pids, paths, sizes or timings)."""

    vllm_version: str | None = None
    platform: str | None = None  # device_config: cuda, cpu, rocm, xpu, ...
    model_runner: str | None = None  # "V1" / "V2", only when the log says so
    quantization: str | None = None  # resolved method from the engine config line
    dtype: str | None = None  # model dtype without the `torch.` prefix
    kv_cache_dtype: str | None = None
    kv_cache_layout: str | None = None
    attention_backend: str | None = None  # target model's backend (the drafter logs a second line)
    attention_candidates: tuple[str, ...] = ()  # backends that passed validation, in priority order
    attention_explicit: bool | None = None  # True when chosen by --attention-backend / env
    flash_attn_version: int | None = None
    linear_kernels: Mapping[str, str] = field(default_factory=dict, hash=False)  # scheme -> kernel(s)
    moe_family: str | None = None  # FP8, NVFP4, MXFP4, MXFP8, INT8, WNA16, UNQUANTIZED, ...
    moe_backend: str | None = None  # MARLIN, TRITON, FLASHINFER_CUTLASS, VLLM_CUTLASS, CPU, ...
    moe_method: str | None = None  # quant-method class, e.g. CompressedTensorsWNA16MoEMethod
    moe_experts: str | None = None  # experts class, e.g. MarlinExperts
    moe_prepare_finalize: str | None = None
    compile_mode: str | None = None  # CompilationMode name: NONE, DYNAMO_TRACE_ONCE, VLLM_COMPILE, ...
    cudagraph_mode: str | None = None  # CUDAGraphMode name: NONE, PIECEWISE, FULL_AND_PIECEWISE, ...
    enforce_eager: bool | None = None
    spec_method: str | None = None
    num_speculative_tokens: int | None = None
    fallbacks: tuple[str, ...] = ()  # short notes such as "fp4-marlin-weight-only"

    def __post_init__(self) -> None:
        # Freeze and sort the collections so equal selections compare, hash and serialize identically.
        frozen = MappingProxyType(dict(sorted(dict(self.linear_kernels).items())))
        object.__setattr__(self, "linear_kernels", frozen)
        object.__setattr__(self, "attention_candidates", tuple(self.attention_candidates))
        object.__setattr__(self, "fallbacks", tuple(sorted(set(self.fallbacks))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict in field order (stable for syrupy / json.dumps)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelRecord:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown KernelRecord keys: {', '.join(unknown)}")
        # __post_init__ turns lists back into tuples; a null collection means "empty".
        collections = ("attention_candidates", "linear_kernels", "fallbacks")
        return cls(**{k: v for k, v in data.items() if v is not None or k not in collections})


def diff_records(old: KernelRecord | Mapping[str, Any], new: KernelRecord | Mapping[str, Any],
                 ignore: Iterable[str] = ()) -> list[str]:
    """Human-readable differences, e.g. ``moe_backend: MARLIN -> TRITON``; empty when equal."""
    a = old if isinstance(old, KernelRecord) else KernelRecord.from_dict(old)
    b = new if isinstance(new, KernelRecord) else KernelRecord.from_dict(new)
    skip = set(ignore)
    lines: list[str] = []
    for f in fields(KernelRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in skip or x == y:
            continue
        if f.name == "linear_kernels":
            for key in sorted(set(x) | set(y)):
                if x.get(key) != y.get(key):
                    lines.append(f"linear_kernels[{key}]: {x.get(key)} -> {y.get(key)}")
        elif f.name == "fallbacks":
            lines += [f"fallbacks: -{n}" for n in x if n not in y]
            lines += [f"fallbacks: +{n}" for n in y if n not in x]
        elif isinstance(x, tuple):
            lines.append(f"{f.name}: [{', '.join(x)}] -> [{', '.join(y)}]")
        else:
            lines.append(f"{f.name}: {x} -> {y}")
    return lines
