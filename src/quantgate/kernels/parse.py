"""Turn a vLLM engine log into a normalized, snapshot-friendly :class:`KernelRecord`.

vLLM names its attention, linear and MoE kernels only in INFO/WARNING log lines, and the wording drifted
between releases (0.10-0.33; see the log-line catalogue the project keeps in shared/reference/vllm-logs.md).
Every rule below maps one family of wordings onto one canonical token, so two runs that picked the same
kernels give equal records whatever the vLLM version, process prefix, colours or timestamps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .record import KernelRecord

__all__ = ["parse_log", "parse_log_file", "spec_decode_metrics", "strip_envelope"]

# --------------------------------------------------------------------------------------------- envelope

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Process tag: `(EngineCore_DP0 pid=1)`, `(VllmWorker rank=0 pid=2)`, `(Worker_TP1 pid=3)`, Ray's
# `(RayWorkerWrapper pid=4, ip=10.0.0.1)`. <=0.30 puts it before everything (stream wrapper).
_PROC = re.compile(r"^\s*\([^()]*?\bpid=\d+[^()]*\)\s*")
_LEVEL = r"(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)"
_TS = r"(?:\d{4}-)?\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?"
# `[user prefix][(Proc pid=N) ]LEVEL [MM-DD HH:MM:SS ][file.py:123] msg`; the 0.31+ formatter puts the
# process tag after VLLM_LOGGING_PREFIX, hence the lazy `.*?` for an arbitrary user prefix.
_ENVELOPE = re.compile(rf"^.*?(?:\([^()]*?\bpid=\d+[^()]*\)\s+)?{_LEVEL}\s+(?:{_TS}\s+)?\[[^\]]+:\d+\]\s?")
_ENVELOPE_NO_FILE = re.compile(rf"^{_LEVEL}\s+{_TS}\s+")
# Host applications that configure logging themselves (VLLM_CONFIGURE_LOGGING=0): `INFO:vllm.x:msg`.
_STD_LOGGING = re.compile(rf"^{_LEVEL}:(?:[\w.]+:)?\s*")
# torch / c10 glog lines: `W1123 06:38:14.764000 11058 torch/x.py:53] msg`, `[W1122 10:22:37.2 x.cpp:68] msg`.
_GLOG = re.compile(r"^\[?[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d+(?: +\d+)? [^\]\s]+:\d+\]\s?")


def strip_envelope(line: str) -> str:
    """Return the bare log message: no ANSI colours, process tag, level, timestamp or ``[file:line]``."""
    text = _ANSI.sub("", line)
    # NewLineFormatter leaves a stray \r; tqdm redraws with \r: the last segment is what a terminal shows.
    segments = [s for s in re.split(r"[\r\n]", text) if s.strip()]
    text = segments[-1].strip() if segments else ""
    if text.startswith("{") and text.endswith("}"):  # 0.31+ `--logging-config.formatter json`
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("message"), str):
            return record["message"].strip()
    while (m := _PROC.match(text)) is not None:
        text = text[m.end():]
    for pattern in (_ENVELOPE, _ENVELOPE_NO_FILE, _STD_LOGGING, _GLOG):
        if (m := pattern.match(text)) is not None:
            return text[m.end():].strip()
    return text.strip()


# ----------------------------------------------------------------------------------------------- record


# ----------------------------------------------------------------------------------------------- parser


class _Builder:
    """Accumulates one log. Selections are first-wins: the target model logs before the drafter, TP
    workers repeat identical lines, and nothing later can reset a value to None. Explicit override or
    fallback lines use :meth:`override`."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.linear: dict[str, set[str]] = {}
        self.mixed_precision: set[str] = set()
        self.fallbacks: set[str] = set()
        self.detected_platform: str | None = None

    def first(self, name: str, value: Any) -> None:
        if value is not None:
            self.values.setdefault(name, value)

    def override(self, name: str, value: Any) -> None:
        if value is not None:
            self.values[name] = value

    def linear_kernel(self, scheme: str, kernel: str) -> None:
        self.linear.setdefault(scheme, set()).add(kernel)

    def build(self) -> KernelRecord:
        linear = {scheme: ", ".join(sorted(kernels)) for scheme, kernels in self.linear.items()}
        # 0.31+ also logs a generic "for mixed-precision linear" line; keep it only when no per-scheme
        # line named that kernel, so records of 0.30 and 0.31 agree.
        named = set().union(*self.linear.values()) if self.linear else set()
        if extra := sorted(self.mixed_precision - named):
            linear["mixed-precision linear"] = ", ".join(extra)
        self.first("platform", self.detected_platform)  # config's device_config outranks detection lines
        return KernelRecord(**self.values, linear_kernels=linear, fallbacks=tuple(self.fallbacks))


_Rule = tuple[re.Pattern[str], Callable[[_Builder, re.Match[str]], None]]
_RULES: list[_Rule] = []


def _rule(pattern: str) -> Callable[[Callable[[_Builder, re.Match[str]], None]], Any]:
    def register(handler: Callable[[_Builder, re.Match[str]], None]) -> Any:
        _RULES.append((re.compile(pattern), handler))
        return handler

    return register


def _note(pattern: str, note: str) -> None:
    """A line whose only meaning is a fallback note; `{0}` in the note is the first group."""
    _RULES.append((re.compile(pattern), lambda b, m: b.fallbacks.add(note.format(*m.groups()))))


def _capture(pattern: str, name: str, convert: Callable[[str], Any] = str) -> None:
    """A line whose first group is the value of one field (first wins)."""
    _RULES.append((re.compile(pattern), lambda b, m: b.first(name, convert(m[1]))))


def _set(pattern: str, note: str | None = None, **values: Any) -> None:
    """An explicit override or fallback line: its values replace what earlier lines said."""

    def handle(b: _Builder, m: re.Match[str]) -> None:
        for name, value in values.items():
            b.override(name, value)
        if note:
            b.fallbacks.add(note)

    _RULES.append((re.compile(pattern), handle))


def _moe(pattern: str, family: str | None = None, prefix: str = "") -> None:
    """A MoE selection line: group `b` names the backend, group `fam` (else `family`) the weight format."""

    def handle(b: _Builder, m: re.Match[str]) -> None:
        b.first("moe_family", _token(m.groupdict().get("fam") or family or "") or None)
        b.first("moe_backend", _token(prefix + m["b"]))

    _RULES.append((re.compile(pattern), handle))


def _quoted(text: str | None) -> tuple[str, ...]:
    # Candidate lists are printed as lists (0.12, 0.16+) or tuples (0.13-0.15): collect the quoted names.
    return tuple(re.findall(r"'([^']+)'", text or ""))


# Older MoE wordings -> the oracle's enum values. VLLM_CUTASS is a typo in the 0.14.1 source; a bare
# "Cutlass" in pre-oracle NvFp4 MoE lines is vLLM's own CUTLASS kernel.
_ALIASES = {
    "ROCM_AITER": "AITER", "VLLM_CUTASS": "VLLM_CUTLASS", "CUTLASS": "VLLM_CUTLASS", "VLLM_MARLIN": "MARLIN",
    "FLASHINFER_TENSORRT_LLM": "FLASHINFER_TRTLLM", "FLASHINFER_MOE_FP8": "FLASHINFER",
    "DEEPGEMM_SM100": "DEEPGEMM", "CUTLASSBLOCKSCALEDGROUPEDGEMM": "CUTLASS_BLOCK_SCALED_GROUPED_GEMM",
    "CUTLASS_BLOCKSCALED_GROUPEDGEMM": "CUTLASS_BLOCK_SCALED_GROUPED_GEMM",
}


def _token(name: str) -> str:
    """`FlashInfer CUTLASS` / `'FLASHINFER_CUTLASS'` / `vLLM CUTASS` -> one upper-case enum-like token."""
    token = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
    return _ALIASES.get(token, token)


def _family_of(method: str) -> str | None:
    lowered = method.lower()
    if "nvfp4" in lowered or "w4a4" in lowered:
        return "NVFP4"
    return "FP8" if "fp8" in lowered else None


# --- engine config line (all versions): the canonical source for platform, quantization, dtypes, compile

_LEVELS = {"0": "NONE", "1": "STOCK_TORCH_COMPILE", "2": "DYNAMO_TRACE_ONCE", "3": "VLLM_COMPILE"}
_CUDAGRAPH_JSON = {"0": "NONE", "1": "PIECEWISE", "2": "FULL", "[2,0]": "FULL_DECODE_ONLY",
                   "[2,1]": "FULL_AND_PIECEWISE"}


def _search(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


@_rule(r"^Initializing a V1 LLM engine \(v(?P<ver>[^)]+)\) with config: (?P<cfg>.*)$")
def _engine_config(b: _Builder, m: re.Match[str]) -> None:
    cfg = m["cfg"]
    b.first("vllm_version", m["ver"])
    b.first("platform", _search(r"\bdevice_config=([A-Za-z]+)", cfg))
    quant = _search(r"(?:^|,\s*)quantization=([\w\-]+)", cfg)
    b.first("quantization", None if quant == "None" else quant)
    b.first("dtype", _search(r"(?:^|,\s*)dtype=(?:torch\.)?(\w+)", cfg))
    b.first("kv_cache_dtype", _search(r"\bkv_cache_dtype=(\w+)", cfg))
    eager = _search(r"\benforce_eager=(True|False)", cfg)
    b.first("enforce_eager", None if eager is None else eager == "True")
    # 0.11.1+ prints a Python dict repr with enums; 0.10-0.11.0 print JSON with bare integers.
    mode = _search(r"'mode': <CompilationMode\.(\w+)", cfg)
    level = _search(r"""["']level["']:\s*(\d)""", cfg)
    b.first("compile_mode", mode or _LEVELS.get(level or ""))
    graphs = _search(r"'cudagraph_mode': <CUDAGraphMode\.(\w+)", cfg)
    graphs_json = _search(r'"cudagraph_mode":\s*(\[[\d, ]+\]|\d)', cfg)
    b.first("cudagraph_mode", graphs or _CUDAGRAPH_JSON.get((graphs_json or "").replace(" ", "")))
    spec = re.search(r"speculative_config=SpeculativeConfig\(method='([^']*)'.*?num_spec_tokens=(\d+)", cfg)
    if spec:
        b.first("spec_method", spec[1].lower())
        b.first("num_speculative_tokens", int(spec[2]))


@_rule(r"^(?:Automatically detected platform (\w+)\.|Platform plugin (\w+) is activated)$")
def _platform(b: _Builder, m: re.Match[str]) -> None:
    b.detected_platform = b.detected_platform or m[1] or m[2]


# --- attention

# 0.10.0-0.11.0 hard-coded phrases (plus CPU/XPU/TPU wordings) -> canonical enum names.
_LEGACY_ATTENTION = {
    "Flash Attention": "FLASH_ATTN", "FlashInfer": "FLASHINFER", "Triton": "TRITON_ATTN",
    "FlexAttention": "FLEX_ATTENTION", "Tree Attention": "TREE_ATTN", "XFormers": "XFORMERS",
    "Cutlass MLA": "CUTLASS_MLA", "FlashInfer MLA": "FLASHINFER_MLA", "FlashMLA": "FLASHMLA",
    "FlashAttention MLA": "FLASH_ATTN_MLA", "Triton MLA": "TRITON_MLA", "Sparse MLA": "FLASHMLA_SPARSE",
    "Flash Attention MLA": "FLASH_ATTN_MLA", "Torch SDPA": "TORCH_SDPA", "Pallas V1": "PALLAS",
}


@_rule(r"^Using (?P<explicit>AttentionBackendEnum\.)?(?P<name>[A-Z][A-Z0-9_]*)(?: attention)? backend"
       r"(?: out of potential backends: (?P<cands>[\[(].*[\])]))?\.?$")
def _attention(b: _Builder, m: re.Match[str]) -> None:
    # 0.11.1-0.33. A bare `Using NAME backend.` follows `Valid backends:` (0.11.x) or names CPU MLA.
    if "attention_backend" in b.values:
        return  # the drafter's line: keep the target model's selection and candidates together
    b.first("attention_backend", m["name"])
    b.first("attention_candidates", _quoted(m["cands"]) or None)
    b.first("attention_explicit", m["explicit"] is not None)


@_rule(r"^Using (?P<name>" + "|".join(sorted(map(re.escape, _LEGACY_ATTENTION), key=len, reverse=True))
       + r") backend(?P<hnd> with HND KV cache layout)?(?: for .+?)?(?: on V1 engine| on XPU)?"
       r"(?: by default for Blackwell \(SM 10\.0\) GPUs)?\.$")
def _legacy_attention(b: _Builder, m: re.Match[str]) -> None:
    b.first("attention_backend", _LEGACY_ATTENTION[m["name"]])
    b.first("attention_explicit", False)
    if m["hnd"]:
        b.first("kv_cache_layout", "HND")


_capture(r"^Valid backends: (\[.*\])$", "attention_candidates", lambda s: _quoted(s) or None)  # 0.11.x


@_rule(r"^Using (\w+) backend \(selected via --attention-backend\)\.$")  # ROCm 0.19+
def _rocm_explicit(b: _Builder, m: re.Match[str]) -> None:
    b.first("attention_backend", m[1])
    b.first("attention_explicit", True)


@_rule(r"^Found incompatible backend\(s\) \[.*?\] with .*? Overriding with (\w+)"
       r" out of potential backends: (.*?)\.?$")  # ROCm 0.19+
def _rocm_override(b: _Builder, m: re.Match[str]) -> None:
    b.first("attention_backend", m[1])
    b.first("attention_candidates", _quoted(m[2]) or None)
    b.fallbacks.add("attention-incompatible-override")


_capture(r"^Using FlashAttention version (\d)", "flash_attn_version", int)  # 0.17.1+
_note(r"^Cannot use FA version (\d)", "flash-attn-v{0}-declined")
_capture(r"^Using (\w+) KV cache layout", "kv_cache_layout")
_note(r"^--block-size \d+ precluded higher-priority backend", "attention-block-size-precluded")

# --- MoE. The experts rule comes first: `Using CPUUnquantizedExperts MoE backend` is not an oracle line.


@_rule(r"^Using (?P<cls>\w*(?:Experts|PrepareAndFinalize)\w*)\b(?: for (?P<fam>\w+) MoE)?")
def _moe_experts(b: _Builder, m: re.Match[str]) -> None:
    slot = "moe_prepare_finalize" if "PrepareAndFinalize" in m["cls"] else "moe_experts"
    b.first(slot, m["cls"])
    b.first("moe_family", m["fam"].upper() if m["fam"] else None)


_moe(r"^Using '?(?P<b>[^']+?)'? (?P<fam>Fp8|NvFp4|Mxfp4|MxFp8|Int8|WNA16|W4A8 Int8|W4A8|Unquantized)"
     r" MoE backend(?: \(user-requested\))?(?: out of potential backends: .*)?\.?$")  # oracle, 0.14.1+
_moe(r"^Using (?P<b>.+?) backend for (?P<fam>FP8|NvFp4|Unquantized|WNA16) MoE(?: \(.*\))?$")  # 0.11.1-0.22
_moe(r"^Using FlashInfer FP8 MoE (?P<b>TRTLLM|CUTLASS) backend for SM\d+", "FP8", "FLASHINFER ")  # 0.11-0.13
_moe(r"^Using (?P<b>FlashInfer MXFP4(?: MXFP8| BF16)?(?: TRTLLM| CUTLASS)?) backend for SM\d+", "MXFP4")
# gpt-oss before the oracle (0.10.1-0.18): no trailing period, unlike XPU's attention "Using Triton backend."
_moe(r"^(?:\[get_mxfp4_backend_with_lora\] )?Using (?P<b>Marlin|Triton|ipex marlin|xpu|CK)"
     r"(?: backend(?: on XPU)?| MXFP4 MoE backend \(Aiter ROCm\))$", "MXFP4")
_moe(r"^Using (?P<b>FlashInfer (?:TensorRT-LLM|CUTLASS|CUTEDSL)) kernels$", "FP8")  # 0.10.2-0.11.0


@_rule(r"^Using (?P<b>.+?)(?: kernels)? for (?P<method>\w*Mo[Ee]\w*)\.$")
def _moe_kernels_for(b: _Builder, m: re.Match[str]) -> None:  # pre-oracle Fp8 / NvFp4 (0.10-0.13)
    b.first("moe_method", m["method"])
    b.first("moe_family", _family_of(m["method"]))
    b.first("moe_backend", _token(m["b"]))


_capture(r"^Using (\w+Mo[Ee]Method)$", "moe_method")
_set(r"^Falling back to Marlin FP4 MoE kernel", "fp4-moe-marlin", moe_backend="MARLIN")


@_rule(r"^Using (?:configuration from .* for MoE layer|default MoE config\.)")
def _moe_triton_config(b: _Builder, m: re.Match[str]) -> None:
    # Tuned-config lines belong to the Triton fused_moe kernel: the only MoE hint for bf16 before 0.15.
    b.first("moe_backend", "TRITON")
    if "default MoE config" in m[0]:
        b.fallbacks.add("moe-untuned-config")


# --- linear


def _nvfp4_token(raw: str) -> str:
    """`cutlass` / `NvFp4LinearBackend.VLLM_CUTLASS` / `CutlassNvFp4LinearKernel` -> `cutlass`."""
    name = raw.split(".")[-1]
    suffix = "-w4a16" if "W4A16" in name else ""
    if name.endswith("LinearKernel"):  # 0.20+ class names
        core = name[: -len("LinearKernel")].replace("NvFp4W4A16", "").replace("NvFp4", "")
        name = core.replace("FlashInfer", "flashinfer-")
    name = name.lower().replace("_", "-").strip("-")
    name = {"vllm-cutlass": "cutlass", "fgbemm-gpu-genai": "fbgemm"}.get(name, name)
    return name + suffix


@_rule(r"^Using (?P<k>\w+Kernel|dequantize \+ batch-invariant matmul)"
       r" for (?P<s>[A-Z]\w+|mixed-precision linear)$")
def _linear_using(b: _Builder, m: re.Match[str]) -> None:
    if m["s"] == "mixed-precision linear":
        b.mixed_precision.add(m["k"])
    else:
        b.linear_kernel(m["s"], m["k"])


@_rule(r"^Selected (\w+) for (\w+)$")
def _linear_selected(b: _Builder, m: re.Match[str]) -> None:  # scaled-mm FP8 / INT8, 0.15+
    b.linear_kernel(m[2], m[1])


@_rule(r"^Using ([\w.\-]+) for (?:NVFP4 GEMM|FP4)$")
def _linear_nvfp4(b: _Builder, m: re.Match[str]) -> None:
    b.linear_kernel("NVFP4 GEMM", _nvfp4_token(m[1]))


@_rule(r"^Using ([\w.]+)(?: backend)? for (MXFP[468]) GEMM$")
def _linear_mx(b: _Builder, m: re.Match[str]) -> None:
    b.linear_kernel(f"{m[2]} GEMM", m[1].split(".")[-1])


_note(r"^Tried to force (\w+), but the kernel couldn't be implemented", "forced-kernel-unavailable:{0}")


# --- compile, CUDA graphs, model runner

# 0.27+ says this equals `-cc.mode=none -cc.cudagraph_mode=none`; older releases only disable the graphs.
_set(r"^Enforce eager set, disabling torch\.compile", enforce_eager=True, compile_mode="NONE",
     cudagraph_mode="NONE")
_set(r"^(?:Cudagraph is disabled under eager mode|Skipping CUDA graph capture)", cudagraph_mode="NONE")


@_rule(r"^(?:Cudagraph mode \w+ .*?Overriding to|.*?Overriding cudagraph_mode from \w+ to) (\w+)\.$")
def _cudagraph_override(b: _Builder, m: re.Match[str]) -> None:
    b.override("cudagraph_mode", m[1])
    b.fallbacks.add("cudagraph-mode-overridden")


_capture(r"^Using (V2) Model Runner", "model_runner")
_set(r"^Model Runner V2 .*?using the V1 model runner instead", "model-runner-v2-unavailable",
     model_runner="V1")


# --- pure fallback notes

_note(r"^(?:Your GPU does not have native support for FP4 computation|.*?Weight-only FP4 compression"
      r" will be used leveraging the Marlin)", "fp4-marlin-weight-only")
_note(r"^(?:Your GPU does not have native support for FP8 computation|.*?Weight-only FP8 compression"
      r" will be used leveraging the Marlin)", "fp8-marlin-weight-only")
_note(r"^NVFP4 linear falling back to the slow and unoptimized emulation backend", "nvfp4-linear-emulation")
_note(r"^Current platform does not support cutlass NVFP4", "nvfp4-cutlass-unsupported")
_note(r"^FlashInfer kernels unavailable for ", "flashinfer-moe-unavailable")
_note(r"^MXFP4 MoE is enabled on .*?but FlashInfer is not available", "mxfp4-moe-flashinfer-unavailable")
_note(r"^MXFP4 linear layer is not implemented", "mxfp4-linear-unquantized")
_note(r"^Using default W8A8 Block FP8 kernel config", "block-fp8-untuned-config")
_note(r"^--linear-backend=\S+ (?:has no kernel|was requested, but no)", "linear-backend-partial")
_note(r"^cuteDSL \(CUTLASS Python\) not available", "cutedsl-unavailable")
_note(r"^Triton is (?:installed, but doesn't include CPU backend|not installed)", "triton-unavailable")


def parse_log(text: str) -> KernelRecord:
    """Parse a whole engine log (API server and engine core interleaved). Unknown lines are ignored,
    so a log with no recognizable line gives ``KernelRecord()``."""
    builder = _Builder()
    seen: set[str] = set()
    for raw in text.splitlines():  # splitlines also splits tqdm's bare \r redraws
        message = strip_envelope(raw)
        if not message or message in seen:  # *_once is per process before 0.19: TP workers repeat lines
            continue
        seen.add(message)
        for pattern, handler in _RULES:
            if (m := pattern.match(message)) is not None:
                handler(builder, m)
                break
    return builder.build()


def parse_log_file(path: str | Path) -> KernelRecord:
    return parse_log(Path(path).read_text(encoding="utf-8", errors="replace"))


# ------------------------------------------------------------------------------------ spec-decode metrics

# 0.10.0-0.10.1 start with "Draft acceptance rate" and have no throughputs; 0.10.2+ end with "Avg Draft ...".
_SPEC_METRICS = re.compile(
    r"^SpecDecoding metrics: (?:Draft acceptance rate: (?P<dar_old>[\d.]+|nan)%, )?"
    r"Mean acceptance length: (?P<mal>[\d.]+|nan), "
    r"(?:Accepted throughput: (?P<acc_tps>[\d.]+|nan) tokens/s, "
    r"Drafted throughput: (?P<draft_tps>[\d.]+|nan) tokens/s, )?"
    r"Accepted: (?P<acc>\d+) tokens, Drafted: (?P<drafted>\d+) tokens, "
    r"Per-position acceptance rate: (?P<pos>[\d., na]*?)"
    r"(?:, Avg Draft acceptance rate: (?P<dar>[\d.]+|nan)%)?$"
)


def _float(text: str | None) -> float | None:
    return None if text is None or text.strip() in ("", "nan") else float(text)  # nan is not JSON


def spec_decode_metrics(text: str) -> list[dict[str, Any]]:
    """Every periodic ``SpecDecoding metrics`` line, in order. Each covers one logging interval (not
    cumulative). Rates per position are fractions; ``draft_acceptance_pct`` is a percentage."""
    out: list[dict[str, Any]] = []
    for raw in text.splitlines():
        m = _SPEC_METRICS.match(strip_envelope(raw))
        if m is None:
            continue
        out.append({
            "mean_acceptance_length": _float(m["mal"]),
            "accepted_tokens": int(m["acc"]),
            "drafted_tokens": int(m["drafted"]),
            "accepted_tokens_per_s": _float(m["acc_tps"]),
            "drafted_tokens_per_s": _float(m["draft_tps"]),
            "per_position_acceptance": [_float(p) for p in m["pos"].split(",") if p.strip()],
            "draft_acceptance_pct": _float(m["dar"] if m["dar"] is not None else m["dar_old"]),
        })
    return out
