"""Decode roofline: the bytes one decoded token must read, the memory bandwidth, the ceiling tok/s.

At batch 1 a decode step reads every active weight once (all of a dense model; for a MoE the attention,
the router and top-k experts per layer), their scales, and the KV cache of the context so far. With the
hardware's memory bandwidth B (GB/s) the ceiling is B / bytes-per-token; measured decode tok/s over that
ceiling says how much of the memory system a config uses. Small synthesized models sit far under it (the
engine's per-step overhead dominates); a real-size model should reach 50-90%.

Sources: config.json of the served model (read here, no transformers), the config's quantization, and
`hardware.MEMORY_BANDWIDTH_GBPS` (datasheet) or a measured figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..hardware import MEMORY_BANDWIDTH_GBPS, bandwidth_for

# Bits per weight (quantized payload) and bits of scale per weight, per quantization of the matrix.
# int4 g128: one bf16 scale per 128 weights; NVFP4: one fp8 scale per 16 (+ a global fp32 per tensor);
# MXFP4: one e8m0 scale per 32; FP8 / INT8 per-channel: one fp32 scale per output row (negligible, counted).
WEIGHT_BITS: dict[str, tuple[float, float]] = {
    "bf16": (16.0, 0.0),
    "fp16": (16.0, 0.0),
    "fp8": (8.0, 0.0),
    "fp8-dynamic": (8.0, 0.0),
    "w8a8": (8.0, 0.0),
    "w4a16": (4.0, 16.0 / 128),
    "w4a8": (4.0, 16.0 / 128),
    "gptq": (4.0, 16.0 / 128),
    "awq": (4.0, 16.0 / 128),
    "nvfp4": (4.0, 8.0 / 16),
    "mxfp4": (4.0, 8.0 / 32),
}
KV_BYTES = {"auto": 2, "bf16": 2, "fp16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class Roofline:
    quantization: str
    active_params: int  # weights read per decoded token
    quantized_params: int  # of those, at the quantized width (linear layers except lm_head and router)
    weight_bytes: float  # weights + scales read per token
    kv_bytes_per_context_token: float
    context: int
    bytes_per_token: float  # weights + KV at `context`
    bandwidth_gbps: float | None
    ceiling_tps: float | None
    measured_tps: float | None = None

    @property
    def fraction(self) -> float | None:
        if self.measured_tps is None or not self.ceiling_tps:
            return None
        return self.measured_tps / self.ceiling_tps

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fraction_of_ceiling"] = self.fraction
        return out


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config.get("text_config", config))


def param_counts(config: dict[str, Any]) -> tuple[int, int]:
    """(active params per token, of which in quantizable linear layers) from a HF config.json dict."""
    c = _text_config(config)
    hidden = int(c["hidden_size"])
    layers = int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    vocab = int(c["vocab_size"])
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    if experts:
        top_k = int(c.get("num_experts_per_tok") or 1)
        moe_inter = int(c.get("moe_intermediate_size") or c["intermediate_size"])
        mlp = top_k * 3 * hidden * moe_inter
        shared = int(c.get("shared_expert_intermediate_size") or 0)
        mlp += 3 * hidden * shared
        router = hidden * experts
    else:
        mlp = 3 * hidden * int(c["intermediate_size"])
        router = 0
    linear = layers * (attn + mlp)
    lm_head = hidden * vocab  # read every step whether tied or not; embedding lookup is one row
    return linear + layers * router + lm_head, linear


def roofline(
    config: dict[str, Any], quantization: str, *, context: int = 0, bandwidth_gbps: float | None = None,
    measured_tps: float | None = None, kv_cache_dtype: str = "auto",
) -> Roofline:
    active, quantized = param_counts(config)
    bits, scale_bits = WEIGHT_BITS.get(quantization, (16.0, 0.0))
    weight_bytes = quantized * (bits + scale_bits) / 8 + (active - quantized) * 2
    c = _text_config(config)
    heads = int(c["num_attention_heads"])
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    kv_per_token = 2 * int(c["num_hidden_layers"]) * kv_heads * head_dim * KV_BYTES.get(kv_cache_dtype, 2)
    total = weight_bytes + kv_per_token * context
    ceiling = bandwidth_gbps * 1e9 / total if bandwidth_gbps else None
    return Roofline(quantization, active, quantized, weight_bytes, float(kv_per_token), context, total,
                    bandwidth_gbps, ceiling, measured_tps)


def for_model_dir(model_dir: str | Path, quantization: str, **kwargs: Any) -> Roofline:
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return roofline(config, quantization, **kwargs)


def bandwidth_table() -> dict[str, float]:
    return dict(MEMORY_BANDWIDTH_GBPS)


def bandwidth(hardware_name: str, measured_gbps: float | None = None) -> float | None:
    """A measured figure wins over the datasheet table."""
    return measured_gbps or bandwidth_for(hardware_name)


def markdown_rows(rows: list[tuple[str, Roofline]]) -> list[str]:
    lines = ["| config | quant | active params | bytes/token | BW GB/s | ceiling tok/s | measured | % of ceiling |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        ceiling = f"{r.ceiling_tps:,.0f}" if r.ceiling_tps else "-"
        measured = f"{r.measured_tps:,.1f}" if r.measured_tps is not None else "-"
        frac = f"{r.fraction:.1%}" if r.fraction is not None else "-"
        bw = f"{r.bandwidth_gbps:,.0f}" if r.bandwidth_gbps else "-"
        lines.append(f"| {name} | {r.quantization} | {r.active_params / 1e6:,.1f} M | "
                     f"{r.bytes_per_token / 1e6:,.2f} MB | {bw} | {ceiling} | {measured} | {frac} |")
    return lines


def figures_for(model_dir: str | Path, quantization: str, bandwidth_gbps: float | None,
                figures: dict[str, Any]) -> list[Any]:
    """Ungated figures for a measurement: per decode cell, the ceiling tok/s (KV read at the cell's mean
    context: prompt + half the output) and the measured decode as a fraction of it. Spec-decode configs can
    pass 100% (several tokens per weight read)."""
    import re

    from ..stats import Figure

    if not bandwidth_gbps:
        return []
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    out: list[Any] = []
    for name, fig in figures.items():
        m = re.fullmatch(r"decode_tps\[ctx=(\d+),out=(\w+)\]", name)
        if not m or not getattr(fig, "samples", None):
            continue
        ctx = int(m.group(1))
        tokens = (fig.extra or {}).get("max_tokens") if getattr(fig, "extra", None) else None
        r = roofline(config, quantization, context=ctx + int(tokens or 0) // 2, bandwidth_gbps=bandwidth_gbps,
                     measured_tps=fig.median)
        note = (f"{r.bytes_per_token / 1e6:.2f} MB/token ({r.active_params / 1e6:.1f} M active params at "
                f"{quantization}), {bandwidth_gbps:.0f} GB/s")
        out.append(Figure(f"roofline_ceiling_tps[{name[len('decode_tps['):-1]}]", "tok/s", True,
                          (r.ceiling_tps or math.nan,), "derived", gated=False, note=note))
        out.append(Figure(f"roofline_fraction[{name[len('decode_tps['):-1]}]", "fraction", True,
                          tuple(s / r.ceiling_tps for s in fig.samples) if r.ceiling_tps else (math.nan,),
                          "derived", gated=False, note="measured decode / ceiling"))
    return out


def report_lines(run: Any, measured: list[Any]) -> list[str]:
    """The report's roofline section (GPU runs): ctx=0, long output, per config."""
    rows = []
    for m in measured:
        ceiling = next((f for n, f in m.figures.items() if n.startswith("roofline_ceiling_tps[ctx=0,")
                        and n.endswith("out=long]")), None)
        frac = next((f for n, f in m.figures.items() if n.startswith("roofline_fraction[ctx=0,")
                     and n.endswith("out=long]")), None)
        if ceiling is None or frac is None:
            continue
        rows.append(f"| {m.config.id} | {m.config.quantization} | {ceiling.note.split(' (')[0]} | "
                    f"{ceiling.median:,.0f} | {frac.median:.1%} |")
    if not rows:
        return []
    bw = run.hardware.memory_bandwidth_gbps
    return ["## Roofline (decode, ctx=0, long output)", "",
            f"Memory bandwidth {bw:,.0f} GB/s (datasheet, hardware.MEMORY_BANDWIDTH_GBPS); bytes per token = "
            "active weights at their bit width + scales + KV cache at the mean context.", "",
            "| Config | Quant | Bytes/token | Ceiling tok/s | Measured / ceiling |", "|---|---|---:|---:|---:|",
            *rows, ""]
