"""Shape models: a real model's config.json and a tokenizer of its full vocabulary, served with dummy weights.

`vllm serve DIR --load-format dummy` builds the model from DIR/config.json and fills every floating-point
parameter with seeded noise (vllm/model_executor/model_loader/weight_utils.py, initialize_dummy_weights); the
integer ones (packed int4, FP4 blocks) keep what was allocated. Nothing else is read from disk but the tokenizer.
So a full-size model costs ~4 MB to carry instead of 16-240 GB to download, and no hub needs to be reachable.

What a shape model measures:
- real: decode/prefill speed at the model's true shape, kernel selection, GPU memory, KV-cache capacity and
  engine start-up time (weights are read at the same width and through the same kernels as a checkpoint's);
- meaningless: accuracy (random weights) and speculative acceptance (a random draft is accepted ~0% of the
  time). Keep trained or real checkpoints for those.

The tokenizer is a `tokenizers` WordLevel model over `<unk>`, `<s>`, `</s>`, `t3` ... `t{V-1}`: quantgate's
prompts are random token ids below `vocab_size`, and vLLM rejects an id at or above the tokenizer's size, so a
BPE trained on a small corpus (quantgate.models.recipes) would not do. It is saved through transformers'
PreTrainedTokenizerFast, which vLLM loads.

In a matrix: `model = { shape = "qwen3-coder-30b-a3b", quantization = "w4a16" }`; the engine gets
`--load-format dummy` added (engine.serve_command). Folders are cached like recipes, by digest, under
<cache>/shapes/.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import _complete, _publish, _write_json, default_cache_dir
from .recipes import MANIFEST, ModelError

SHAPE_BUILDER_VERSION = 1
UNK, BOS, EOS = "<unk>", "<s>", "</s>"  # ids 0, 1, 2: config.json's bos/eos point here, not at Qwen's ids
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Shape:
    name: str
    source: str  # where the architecture was read from
    config: dict[str, Any]
    native_quantization: str = "bf16"  # the checkpoint's own format (gpt-oss ships MXFP4)
    quantizations: tuple[str, ...] = ("bf16",)  # what `quantization` may name for this shape

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])


_COMMON = {"torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "use_cache": True}

# Qwen/Qwen3-Coder-30B-A3B-Instruct, config.json on huggingface.co (48 layers, 128 experts top-8).
_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "intermediate_size": 6144,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "vocab_size": 151936,
    "tie_word_embeddings": False, "rope_theta": 10000000, "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-06, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
    "router_aux_loss_coef": 0.001, "output_router_logits": False, **_COMMON,
}

# Qwen/Qwen3-8B, config.json on huggingface.co: the dense 8B class.
_Q8B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
    "vocab_size": 151936, "tie_word_embeddings": False, "rope_theta": 1000000, "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, **_COMMON,
}

# openai/gpt-oss-120b, config.json on huggingface.co (36 layers alternating sliding/full attention, 128 experts
# top-4, MXFP4 experts; attention, router, embeddings and head in bf16).
_GPT_OSS = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
    "intermediate_size": 2880, "num_hidden_layers": 36,
    "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(36)],
    "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 128,
    "num_experts_per_tok": 4, "experts_per_token": 4, "sliding_window": 128, "swiglu_limit": 7.0,
    "attention_bias": True, "attention_dropout": 0.0, "vocab_size": 201088, "rope_theta": 150000,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                     "original_max_position_embeddings": 4096, "truncate": False},
    "initial_context_length": 4096, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "hidden_act": "silu", "tie_word_embeddings": False, "router_aux_loss_coef": 0.9,
    "output_router_logits": False, **_COMMON,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
}

# Qwen/Qwen3-Next-80B-A3B-Instruct, config.json on huggingface.co: 48 layers, three gated-delta-net layers per
# gated full-attention layer, 512 experts top-10 plus a shared expert, and one MTP layer (mtp.* tensors).
_NEXT = {
    "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "hidden_size": 2048,
    "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
    "intermediate_size": 5120, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
    "num_experts": 512, "num_experts_per_tok": 10, "norm_topk_prob": True, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "full_attention_interval": 4,
    "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(48)],
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "partial_rotary_factor": 0.25,
    "rope_theta": 10000000, "max_position_embeddings": 262144, "rms_norm_eps": 1e-06, "vocab_size": 151936,
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
    "router_aux_loss_coef": 0.001, "output_router_logits": False, "num_nextn_predict_layers": 1, **_COMMON,
}

_HF = "https://huggingface.co/{}/blob/main/config.json"
SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("qwen3-coder-30b-a3b", _HF.format("Qwen/Qwen3-Coder-30B-A3B-Instruct"), _A3B,
          quantizations=("bf16", "fp8-dynamic", "w4a16", "w4a8", "nvfp4")),
    Shape("qwen3-8b", _HF.format("Qwen/Qwen3-8B"), _Q8B,
          quantizations=("bf16", "fp8-dynamic", "w4a16", "nvfp4")),
    Shape("gpt-oss-120b", _HF.format("openai/gpt-oss-120b"), _GPT_OSS, native_quantization="mxfp4",
          quantizations=("mxfp4",)),
    Shape("qwen3-next-80b-a3b", _HF.format("Qwen/Qwen3-Next-80B-A3B-Instruct"), _NEXT,
          quantizations=("bf16", "nvfp4", "w4a16")),
)}

# Layers kept in bf16 by every compressed-tensors block: the head and the MoE routers (as llmcompressor's
# recipes for these models do), and for Qwen3-Next the shared-expert gate, the gated-delta-net projections
# and the MTP layer (NVIDIA's and RedHat's published Qwen3-Next checkpoints leave those unquantized).
_IGNORE = ["lm_head", "re:.*mlp.gate$", "re:.*shared_expert_gate$", "re:.*linear_attn.*", "re:^mtp.*"]


def _ct(weights: dict[str, Any], fmt: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A compressed-tensors quantization_config block as llmcompressor writes it (one group over Linear)."""
    group: dict[str, Any] = {"targets": ["Linear"], "format": fmt, "weights": weights}
    if inputs is not None:
        group["input_activations"] = inputs
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "ignore": list(_IGNORE), "config_groups": {"group_0": group}}


# llmcompressor presets W4A16 (int4 g128), FP8_DYNAMIC (fp8 per-channel weights, per-token dynamic
# activations), W4A8 (int4 g128 weights, fp8 per-token activations: vLLM's CUTLASS W4A8 on sm90) and NVFP4A16
# (FP4 e2m1 in groups of 16 with fp8 scales: weight-only Marlin on Hopper, no FP4 tensor cores there).
QUANT_CONFIGS: dict[str, dict[str, Any]] = {
    "w4a16": _ct({"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128,
                  "dynamic": False}, "pack-quantized"),
    "fp8-dynamic": _ct({"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel",
                        "dynamic": False},
                       "float-quantized",
                       {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}),
    "w4a8": _ct({"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128,
                 "dynamic": False}, "pack-quantized",
                {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}),
    "nvfp4": _ct({"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                  "group_size": 16, "dynamic": False}, "nvfp4-pack-quantized"),
}


@dataclass(frozen=True)
class ShapeSpec:
    """A matrix's `{shape = ..., quantization = ...}` table, checked."""

    shape: str
    quantization: str = "bf16"
    overrides: dict[str, Any] = field(default_factory=dict)  # config.json keys (a test may shrink a shape)

    def config_json(self) -> dict[str, Any]:
        base = SHAPES[self.shape]
        cfg = copy.deepcopy(base.config)
        cfg.update(copy.deepcopy(self.overrides))
        if "num_hidden_layers" in self.overrides and "layer_types" in cfg:
            n = int(cfg["num_hidden_layers"])
            cfg["layer_types"] = [t for t, _ in zip(_cycle(base.config["layer_types"]), range(n), strict=False)]
        if self.quantization != base.native_quantization:
            cfg["quantization_config"] = copy.deepcopy(QUANT_CONFIGS[self.quantization])
        return cfg

    def digest(self) -> str:
        payload = {"builder": SHAPE_BUILDER_VERSION, "shape": self.shape, "config": self.config_json()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def dir_name(self) -> str:
        return f"{self.shape}-{self.quantization}-{self.digest()[:12]}"


def _cycle(items: list[Any]) -> Any:
    while True:
        yield from items


SPEC_KEYS = ("shape", "quantization", "config")


def is_shape_spec(ref: object) -> bool:
    return isinstance(ref, Mapping) and "shape" in ref


def spec_from_table(table: Mapping[str, Any], *, where: str = "", quantization: str | None = None) -> ShapeSpec:
    """`{shape = "qwen3-coder-30b-a3b", quantization = "w4a16"}`; `quantization` is the config-level value
    (online `fp8` means a bf16 checkpoint quantized by vLLM). Errors name `where` and the bad key or value."""
    prefix = f"{where}: " if where else ""
    unknown = sorted(str(k) for k in table if k not in SPEC_KEYS)
    if unknown:
        raise ModelError(f"{prefix}unknown shape key(s) {', '.join(map(repr, unknown))} "
                         f"(allowed: {', '.join(SPEC_KEYS)})")
    name = table.get("shape")
    if name not in SHAPES:
        raise ModelError(f"{prefix}unknown shape {name!r} (known: {', '.join(SHAPES)})")
    shape = SHAPES[str(name)]
    quant = table.get("quantization")
    if quant is None:
        quant = quantization if quantization not in (None, "fp8") else shape.native_quantization
    if quant == "fp8":  # vLLM's online FP8 quantizes the bf16 checkpoint at load time
        quant = "bf16"
    if quant not in shape.quantizations:
        raise ModelError(f"{prefix}shape {name!r} has no quantization {quant!r} "
                         f"(known: {', '.join(shape.quantizations)})")
    overrides = table.get("config", {})
    if not isinstance(overrides, Mapping):
        raise ModelError(f"{prefix}shape key 'config' must be a table of config.json keys, got {overrides!r}")
    return ShapeSpec(str(name), str(quant), dict(overrides))


# --- building -------------------------------------------------------------------------------------

def _tokenizer_dir(cache: Path, vocab_size: int) -> Path:
    return cache / "tokenizers" / f"wordlevel-{vocab_size}-v{SHAPE_BUILDER_VERSION}"


def build_tokenizer(out: Path, vocab_size: int, max_length: int) -> None:
    """A WordLevel tokenizer whose ids are exactly 0..vocab_size-1. The files are written by hand in the form
    every transformers release loads as PreTrainedTokenizerFast (transformers 5's save_pretrained names a
    class 4.x lacks, and the device's transformers is not this machine's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {UNK: 0, BOS: 1, EOS: 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([UNK, BOS, EOS])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    specials = {"unk_token": UNK, "bos_token": BOS, "eos_token": EOS, "pad_token": UNK}
    _write_json(out / "special_tokens_map.json", specials)
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                "model_max_length": max_length, **specials})


def ensure_tokenizer(cache: Path, vocab_size: int) -> Path:
    final = _tokenizer_dir(cache, vocab_size)

    def build(tmp: Path) -> dict[str, Any]:
        build_tokenizer(tmp, vocab_size, 1 << 20)
        return {"kind": "tokenizer", "type": "wordlevel", "vocab_size": vocab_size}

    if not _complete(final):
        _publish(final, build, None)
    return final


def ensure_shape(spec: ShapeSpec, cache_dir: Path | None = None) -> Path:
    """The spec's folder (config.json, tokenizer, generation_config.json), built on first use (seconds)."""
    cache = Path(cache_dir or default_cache_dir())
    final = cache / "shapes" / spec.dir_name
    if _complete(final):
        return final
    cfg = spec.config_json()
    tok = ensure_tokenizer(cache, int(cfg["vocab_size"]))

    def build(tmp: Path) -> dict[str, Any]:
        _write_json(tmp / "config.json", cfg)
        for name in TOKENIZER_FILES:
            if (tok / name).exists():  # transformers 5 writes no special_tokens_map.json
                shutil.copyfile(tok / name, tmp / name)
        tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
        tok_cfg["model_max_length"] = int(cfg.get("max_position_embeddings", 32768))
        _write_json(tmp / "tokenizer_config.json", tok_cfg)
        _write_json(tmp / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
        return {"kind": "shape", "builder_version": SHAPE_BUILDER_VERSION, "digest": spec.digest(),
                "shape": spec.shape, "quantization": spec.quantization, "source": SHAPES[spec.shape].source,
                "overrides": spec.overrides, "load_format": "dummy"}

    _publish(final, build, None)
    return final


def is_shape_folder(path: str | Path) -> bool:
    """A folder ensure_shape built (served with --load-format dummy)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8")).get("kind") == "shape"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def describe() -> list[dict[str, Any]]:
    """Every shape and its quantizations, for docs and `quantgate models shapes`."""
    return [dataclasses.asdict(s) | {"vocab_size": s.vocab_size} for s in SHAPES.values()]
