"""Deterministic tiny models: a recipe and a seed become a folder that vLLM can serve.

No model hub is reachable where the gate runs, so the models are synthesized: a byte-level BPE tokenizer
trained on a generated corpus, random bf16 weights from the recipe's seed, and (optionally) a
compressed-tensors quantized copy made by llmcompressor. Everything is cached by digest under
`default_cache_dir()`:

    <cache>/tokenizers/bytebpe-<vocab>-<digest12>/        tokenizer, shared by every model of that vocab size
    <cache>/<name>-<bf16|quantization>-<digest12>/         config.json, model.safetensors, tokenizer files,
                                                           generation_config.json, quantgate-build.json
    <cache>/.locks/, <cache>/tokenizers/.locks/           one lock file per folder (builders wait on it)
    <cache>/.logs/<folder>.log                            the worker's output when a build failed

A folder is published with one os.replace of a finished temp folder, so a folder that exists is complete;
`quantgate-build.json` (written last) is checked as well. The heavy work runs in subprocesses
(`_build_model.py` with this interpreter, `_quantize_model.py` with the quantizer's own venv), so importing
this module costs nothing and the pytest process stays small.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import QuantgateError

BUILDER_VERSION = 1  # bump when the builders change what they write: every digest (and cache folder) changes
TOKENIZER_VERSION = 1

ARCHITECTURES = ("qwen3", "qwen3_moe", "qwen3_next", "eagle3")
MOE_ARCHITECTURES = ("qwen3_moe", "qwen3_next")  # vLLM's Qwen3-Next needs MoE layers (set_moe_parameters)
QUANTIZATIONS = ("w4a16", "w8a8", "fp8-dynamic")  # None means bf16
# llmcompressor presets, all data-free (W8A8: int8 per-channel weights, dynamic per-token activations).
QUANT_SCHEMES = {"w4a16": "W4A16", "w8a8": "W8A8", "fp8-dynamic": "FP8_DYNAMIC"}
# Training tasks a recipe's `train` may name (defined in _build_model.TRAIN_TASKS; an id never changes meaning).
TRAIN_TASKS = ("arith-v2",)
QUANT_IGNORE = ("lm_head", "re:.*mlp.gate$")  # keep the LM head and the MoE router in bf16
GROUP_SIZE = 128  # W4A16 group size: vLLM needs it to divide every quantized input dimension

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"
BOS_ID, EOS_ID, PAD_ID = 0, 2, 0
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MANIFEST = "quantgate-build.json"


Log = Callable[[str], None]


class ModelError(QuantgateError):
    """A recipe is invalid or a model could not be built; the message says which and how to fix it."""


# --- recipes --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRecipe:
    """A deterministic model: the same recipe gives the same bytes."""

    name: str
    architecture: str  # "qwen3" | "qwen3_moe" | "qwen3_next" | "eagle3"
    quantization: str | None = None  # None (bf16) | "w4a16" | "w8a8" | "fp8-dynamic"
    seed: int = 42
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    vocab_size: int = 4096
    max_position_embeddings: int = 32768  # contexts up to 16K (+ output) fit
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    num_experts: int = 0  # qwen3_moe and qwen3_next only
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    # qwen3_next only: a shared expert per MoE layer, gated-delta-net (linear attention) layers with a full
    # attention layer every `full_attention_interval` layers, and `mtp_layers` multi-token-prediction layers
    # (the `mtp.*` tensors vLLM's method "mtp" drafts with)
    shared_expert_intermediate_size: int = 0
    full_attention_interval: int = 0
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_head_dim: int = 0
    mtp_layers: int = 0
    eagle_target: str | None = None  # eagle3 only: the base recipe whose hidden states the draft reads
    eagle_aux_hidden_state_layer_ids: tuple[int, ...] = ()
    train: str | None = None  # a TRAIN_TASKS id: weights trained on that task's generated text, not random

    def __post_init__(self) -> None:
        ids = self.eagle_aux_hidden_state_layer_ids
        if isinstance(ids, list):  # accept lists, keep the field hashable
            object.__setattr__(self, "eagle_aux_hidden_state_layer_ids", tuple(ids))
        _validate(self)

    @property
    def label(self) -> str:
        return self.quantization or "bf16"

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.label}-{self.digest()[:12]}"

    def base(self) -> ModelRecipe:
        """The bf16 recipe this one is quantized from (itself when unquantized)."""
        return dataclasses.replace(self, quantization=None)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eagle_aux_hidden_state_layer_ids"] = list(self.eagle_aux_hidden_state_layer_ids)
        for key, unset in _LATE_FIELDS.items():  # left out when unset: earlier recipes keep their digests
            if d[key] == unset:
                del d[key]
        return d

    def digest(self) -> str:
        payload = {"builder": BUILDER_VERSION, "tokenizer": TOKENIZER_VERSION, "recipe": self.to_dict()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# Fields added after the first recipes were published, with their unset value.
_LATE_FIELDS: dict[str, object] = {
    "train": None, "shared_expert_intermediate_size": 0, "full_attention_interval": 0,
    "linear_num_key_heads": 0, "linear_num_value_heads": 0, "linear_head_dim": 0, "mtp_layers": 0,
}
_NEXT_KEYS = ("shared_expert_intermediate_size", "full_attention_interval", "linear_num_key_heads",
              "linear_num_value_heads", "linear_head_dim", "mtp_layers")


@dataclass(frozen=True)
class TokenizerRecipe:
    """The shared tokenizer: its seed is fixed so every model of one vocab size gets the same one."""

    vocab_size: int = 4096
    seed: int = 0
    corpus_lines: int = 60_000

    def digest(self) -> str:
        payload = {"tokenizer": TOKENIZER_VERSION, "recipe": dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def dir_name(self) -> str:
        return f"bytebpe-{self.vocab_size}-{self.digest()[:12]}"


# Keys a spec may set, besides "recipe" and "quantization", with the type each must have.
_SPEC_TYPES: dict[str, type] = {
    "seed": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "num_key_value_heads": int, "head_dim": int, "intermediate_size": int, "vocab_size": int,
    "max_position_embeddings": int, "tie_word_embeddings": bool, "rope_theta": float, "rms_norm_eps": float,
    "num_experts": int, "num_experts_per_tok": int, "moe_intermediate_size": int,
    "eagle_aux_hidden_state_layer_ids": tuple, **{key: int for key in _NEXT_KEYS},
}
_POSITIVE = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "max_position_embeddings",
)


def _validate(r: ModelRecipe) -> None:
    def bad(msg: str) -> None:
        raise ModelError(f"model recipe '{r.name}': {msg}")

    if not isinstance(r.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", r.name):
        raise ModelError(f"model recipe name {r.name!r} must be lower-case letters, digits, '.', '_' or '-'")
    if r.architecture not in ARCHITECTURES:
        bad(f"architecture {r.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    if r.quantization is not None and r.quantization not in QUANTIZATIONS:
        bad(f"quantization {r.quantization!r} is not one of bf16, {', '.join(QUANTIZATIONS)}")
    if not _is_int(r.seed) or not 0 <= r.seed < 2**63:
        bad(f"seed={r.seed!r} must be an integer in 0..2**63-1")
    for key in _POSITIVE:
        value = getattr(r, key)
        if not _is_int(value) or value <= 0:
            bad(f"{key}={value!r} must be a positive integer")
    for key, value in (("hidden_size", r.hidden_size), ("intermediate_size", r.intermediate_size),
                       ("num_attention_heads*head_dim", r.num_attention_heads * r.head_dim)):
        if value % GROUP_SIZE:
            bad(f"{key}={value} must be a multiple of {GROUP_SIZE} "
                f"(W4A16 quantizes in groups of {GROUP_SIZE})")
    if r.num_attention_heads % r.num_key_value_heads:
        bad(f"num_attention_heads={r.num_attention_heads} must be a multiple of "
            f"num_key_value_heads={r.num_key_value_heads}")
    if r.head_dim % 2:
        bad(f"head_dim={r.head_dim} must be even (rotary embeddings)")
    if not 512 <= r.vocab_size <= 32768:
        bad(f"vocab_size={r.vocab_size} must be in 512..32768 (the tokenizer is trained locally)")
    if r.max_position_embeddings < 128:
        bad(f"max_position_embeddings={r.max_position_embeddings} must be at least 128")
    if not isinstance(r.tie_word_embeddings, bool):
        bad(f"tie_word_embeddings={r.tie_word_embeddings!r} must be true or false")
    for key in ("rope_theta", "rms_norm_eps"):
        value = getattr(r, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            bad(f"{key}={value!r} must be a positive number")

    if r.train is not None:
        if r.train not in TRAIN_TASKS:
            bad(f"train={r.train!r} is not one of {', '.join(TRAIN_TASKS)}")
        if r.architecture != "qwen3":
            bad(f"train={r.train!r}: only dense qwen3 recipes can be trained")

    moe_keys = ("num_experts", "num_experts_per_tok", "moe_intermediate_size")
    if r.architecture in MOE_ARCHITECTURES:
        if not _is_int(r.num_experts) or r.num_experts < 2:
            bad(f"num_experts={r.num_experts!r} must be an integer >= 2")
        if not _is_int(r.num_experts_per_tok) or not 1 <= r.num_experts_per_tok <= r.num_experts:
            bad(f"num_experts_per_tok={r.num_experts_per_tok!r} must be in 1..num_experts ({r.num_experts})")
        if not _is_int(r.moe_intermediate_size) or r.moe_intermediate_size <= 0 \
                or r.moe_intermediate_size % GROUP_SIZE:
            bad(f"moe_intermediate_size={r.moe_intermediate_size!r} must be a positive multiple of "
                f"{GROUP_SIZE} "
                f"(W4A16 quantizes in groups of {GROUP_SIZE})")
    else:
        for key in moe_keys:
            if getattr(r, key) != 0:
                bad(f"{key}={getattr(r, key)!r} only applies to {' and '.join(MOE_ARCHITECTURES)} recipes")
    if r.architecture == "qwen3_next":
        _validate_next(r, bad)
    else:
        for key in _NEXT_KEYS:
            if getattr(r, key) != 0:
                bad(f"{key}={getattr(r, key)!r} only applies to qwen3_next recipes")

    if r.architecture == "eagle3":
        if not isinstance(r.eagle_target, str) or not r.eagle_target:
            bad("an eagle3 draft needs eagle_target (the base recipe it drafts for)")
        if r.num_hidden_layers != 1:
            bad(f"num_hidden_layers={r.num_hidden_layers}: an eagle3 draft has exactly 1 layer")
        ids = r.eagle_aux_hidden_state_layer_ids
        if not ids or not all(_is_int(i) and i >= 0 for i in ids) or len(set(ids)) != len(ids):
            bad(f"eagle_aux_hidden_state_layer_ids={list(ids)!r} must be distinct layer indices >= 0")
        if r.quantization is not None:
            bad(f"quantization {r.quantization!r}: eagle3 drafts are built in bf16 only")
    elif r.eagle_target is not None or r.eagle_aux_hidden_state_layer_ids:
        bad("eagle_target and eagle_aux_hidden_state_layer_ids only apply to eagle3 recipes")


def _validate_next(r: ModelRecipe, bad: Callable[[str], None]) -> None:
    for key in ("shared_expert_intermediate_size", "full_attention_interval", "linear_num_key_heads",
                "linear_num_value_heads", "linear_head_dim"):
        value = getattr(r, key)
        if not _is_int(value) or value <= 0:
            bad(f"{key}={value!r} must be a positive integer")
    if not _is_int(r.mtp_layers) or r.mtp_layers < 0:
        bad(f"mtp_layers={r.mtp_layers!r} must be an integer >= 0")
    if r.full_attention_interval > r.num_hidden_layers:
        bad(f"full_attention_interval={r.full_attention_interval} leaves no full attention layer in "
            f"{r.num_hidden_layers} layers")
    if r.linear_num_value_heads % r.linear_num_key_heads:
        bad(f"linear_num_value_heads={r.linear_num_value_heads} must be a multiple of "
            f"linear_num_key_heads={r.linear_num_key_heads}")
    if r.quantization is not None:
        bad(f"quantization {r.quantization!r}: qwen3_next recipes are built in bf16 only "
            f"(quantize online with serve_args such as --quantization fp8)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_draft(draft: ModelRecipe, target: ModelRecipe) -> None:
    """Raise ModelError unless `draft` (eagle3) can serve as the speculative head of `target`."""
    if draft.architecture != "eagle3":
        raise ModelError(f"model recipe '{draft.name}' is not an eagle3 draft")
    if target.architecture not in ("qwen3", "qwen3_moe"):
        raise ModelError(f"eagle3 draft '{draft.name}': target '{target.name}' must be a qwen3 or "
                         f"qwen3_moe model")
    for key in ("hidden_size", "vocab_size"):
        if getattr(draft, key) != getattr(target, key):
            raise ModelError(f"eagle3 draft '{draft.name}': {key}={getattr(draft, key)} differs from target "
                             f"'{target.name}' ({getattr(target, key)})")
    top = max(draft.eagle_aux_hidden_state_layer_ids)
    if top >= target.num_hidden_layers:
        raise ModelError(f"eagle3 draft '{draft.name}': eagle_aux_hidden_state_layer_ids "
                         f"{list(draft.eagle_aux_hidden_state_layer_ids)} name layer {top}, but target "
                         f"'{target.name}' has {target.num_hidden_layers} layers")


def _check_eagle_target(recipe: ModelRecipe) -> None:
    if recipe.architecture != "eagle3":
        return
    target = RECIPES.get(recipe.eagle_target or "")
    if target is None or target.architecture == "eagle3":
        known = ", ".join(n for n, r in RECIPES.items() if r.architecture != "eagle3")
        raise ModelError(f"model recipe '{recipe.name}': eagle_target {recipe.eagle_target!r} is not a base "
                         f"recipe (known: {known})")
    check_draft(recipe, target)


_DENSE = ModelRecipe(name="qwen3-dense", architecture="qwen3")
RECIPES: dict[str, ModelRecipe] = {
    "qwen3-dense": _DENSE,
    "qwen3-moe": dataclasses.replace(
        _DENSE, name="qwen3-moe", architecture="qwen3_moe", num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=256,
    ),
    # Qwen3-Next-80B-A3B's structure at the size of qwen3-moe: 3 gated-delta-net layers then 1 gated full
    # attention layer, MoE with a shared expert, untied LM head, and one MTP layer, so that vLLM's
    # speculative method "mtp" runs (the seeds' Qwen3-Next MTP NST=1/2 setups). Random weights: the MTP
    # head's acceptance is near 0; the path is what is tested.
    "qwen3-next": dataclasses.replace(
        _DENSE, name="qwen3-next", architecture="qwen3_next", tie_word_embeddings=False, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=256, shared_expert_intermediate_size=256,
        full_attention_interval=4, linear_num_key_heads=2, linear_num_value_heads=4, linear_head_dim=64,
        mtp_layers=1,
    ),
    # A tiny model that really does arithmetic: weights trained locally (~3 min on 2 cores) on the text of
    # quantgate.workload.accuracy's generated problem set, so math accuracy means something on the embedded default.
    "qwen3-arith": dataclasses.replace(
        _DENSE, name="qwen3-arith", hidden_size=128, num_hidden_layers=3, intermediate_size=384,
        max_position_embeddings=2048, train="arith-v2",
    ),
    # One draft layer reading target layers 1-3: Qwen3's default (2, L//2, L-3) collides for a 4-layer target.
    "eagle3-qwen3-dense": dataclasses.replace(
        _DENSE, name="eagle3-qwen3-dense", architecture="eagle3", num_hidden_layers=1,
        tie_word_embeddings=False, eagle_target="qwen3-dense", eagle_aux_hidden_state_layer_ids=(1, 2, 3),
    ),
}
DEFAULT_BUILD = tuple(RECIPES)


def _parse_quantization(value: object) -> str | None:
    if value is None or (isinstance(value, str) and value.lower() in ("bf16", "none")):
        return None
    if isinstance(value, str):
        norm = value.lower().replace("_", "-")
        if norm in QUANTIZATIONS:
            return norm
    raise ModelError(f"quantization {value!r} is not one of bf16, {', '.join(QUANTIZATIONS)}")


def recipe_from_spec(
    spec: Mapping[str, object], *, where: str = "", quantization: str | None = None,
) -> ModelRecipe:
    """A recipe from a matrix table such as {recipe = "qwen3-dense", quantization = "w4a16", seed = 7}.

    `quantization` is the config-level value (EngineConfig.quantization: "bf16", "w4a16", ...), used when
    the table has none; a table that says otherwise is an error. Errors name `where` (e.g.
    "fixtures/matrix/cpu.toml: config 'w4a16'") and the offending key and value.
    """
    prefix = f"{where}: " if where else ""
    try:
        if not isinstance(spec, Mapping):
            raise ModelError(f"a model recipe must be a table, got {spec!r}")
        name = spec.get("recipe")
        if name not in RECIPES:
            raise ModelError(f"unknown model recipe {name!r} (known: {', '.join(RECIPES)})")
        allowed = {"recipe", "quantization", *_SPEC_TYPES}
        unknown = sorted(str(k) for k in spec if k not in allowed)
        if unknown:
            raise ModelError(f"unknown model key(s) {', '.join(repr(k) for k in unknown)} "
                             f"(allowed: {', '.join(sorted(allowed))})")
        changes: dict[str, Any] = {}
        if "quantization" in spec:
            changes["quantization"] = _parse_quantization(spec["quantization"])
        if quantization is not None:
            outer = _parse_quantization(quantization)
            if "quantization" in spec and changes["quantization"] != outer:
                raise ModelError(f"model quantization {spec['quantization']!r} contradicts the config's "
                                 f"quantization {quantization!r}")
            changes["quantization"] = outer
        for key, value in spec.items():
            if key in _SPEC_TYPES:
                changes[key] = _coerce(key, value)
        recipe = dataclasses.replace(RECIPES[str(name)], **changes)
        _check_eagle_target(recipe)
        return recipe
    except ModelError as exc:
        raise ModelError(prefix + str(exc)) from None


def _coerce(key: str, value: object) -> object:
    kind = _SPEC_TYPES[key]
    if kind is int and _is_int(value):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is tuple and isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
        return tuple(value)
    want = {int: "an integer", bool: "true or false", float: "a number", tuple: "a list of integers"}[kind]
    raise ModelError(f"model key {key!r} must be {want}, got {value!r}")


def recipe_from_name(text: str) -> ModelRecipe:
    """'qwen3-dense' or 'qwen3-dense:w4a16' (the CLI's spelling) -> recipe."""
    name, _, quant = text.partition(":")
    spec: dict[str, object] = {"recipe": name}
    if quant:
        spec["quantization"] = quant
    return recipe_from_spec(spec, where=f"model {text!r}")


# --- cache ----------------------------------------------------------------------------------------


# --- building -------------------------------------------------------------------------------------


