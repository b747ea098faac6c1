"""Worker run by quantgate.models.cache in a subprocess: trains the tokenizer or writes a random-weight model.

Usage: python _build_model.py JOB_JSON
  {"kind": "tokenizer", "out": DIR, "vocab_size": 4096, "seed": 0, "corpus_lines": 60000,
   "special_tokens": [...], "eos_token": ..., "pad_token": ..., "chat_template": ...}
  {"kind": "model", "out": DIR, "recipe": {...ModelRecipe fields...}, "bos_token_id": 0, "eos_token_id": 2,
   "pad_token_id": 0}
  a recipe with "train": "<task>" (qwen3-arith) also needs "tokenizer": DIR and gets trained weights;
  that path imports transformers (its Qwen3 module, so the trained checkpoint is exactly what vLLM loads)

Kept free of quantgate imports so that it runs by file path with any interpreter that has torch,
tokenizers and safetensors. transformers is not needed (importing it alone costs ~5 s): the checkpoint
layout and config.json are written directly, and the tests load the result with transformers.
The last stdout line is `QUANTGATE_RESULT {json}`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as quantgate.models._build_model (the tests)
    from ._build_tokenizer import _write_json, build_tokenizer
else:  # run by file path (quantgate.models.cache): this folder is sys.path[0]
    from _build_tokenizer import _write_json, build_tokenizer  # type: ignore[no-redef]

INIT_STD = 0.02  # transformers' default initializer_range
CONV_KERNEL = 4  # Qwen3-Next's linear_conv_kernel_dim
PARTIAL_ROTARY = 0.25  # Qwen3-Next rotates a quarter of each attention head


# --- weights --------------------------------------------------------------------------------------

def _tensor_seed(seed: int, name: str) -> int:
    # One generator per tensor, keyed by name: the bytes do not depend on init or iteration order.
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    import torch

    state = {}
    for name, shape in sorted(shapes.items()):
        if len(shape) == 1:  # RMSNorm weights
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
            values = torch.randn(shape, generator=gen, dtype=torch.float32) * INIT_STD
            state[name] = values.to(torch.bfloat16)
    return state


def _qwen3_layout(r: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the classic Hugging Face Qwen3 / Qwen3-MoE checkpoint (per-expert MoE
    weights), which vLLM loads and transformers 5 converts on load."""
    h = r["hidden_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (r["vocab_size"], h), "model.norm.weight": (h,),
    }
    if not r["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (r["vocab_size"], h)
    for i in range(r["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        shapes.update(_attention_layout(p, r, r["num_attention_heads"] * r["head_dim"]))
        if r["architecture"] == "qwen3_moe":
            shapes.update(_experts_layout(p, r))
        else:
            inter = r["intermediate_size"]
            shapes.update({p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                           p + "mlp.down_proj.weight": (h, inter)})
    return shapes


def _attention_layout(p: str, r: dict[str, Any], q_out: int) -> dict[str, tuple[int, ...]]:
    """q/k/v/o projections and the per-head q/k norms of one Qwen3 (or Qwen3-Next full attention) layer."""
    h, hd = r["hidden_size"], r["head_dim"]
    q, kv = r["num_attention_heads"] * hd, r["num_key_value_heads"] * hd
    return {
        p + "self_attn.q_proj.weight": (q_out, h), p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
        p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
    }


def _experts_layout(p: str, r: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """A MoE block in the per-expert layout (router `mlp.gate`, `mlp.experts.<e>.*`)."""
    h, inter = r["hidden_size"], r["moe_intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {p + "mlp.gate.weight": (r["num_experts"], h)}
    for e in range(r["num_experts"]):
        x = f"{p}mlp.experts.{e}."
        shapes.update({x + "gate_proj.weight": (inter, h), x + "up_proj.weight": (inter, h),
                       x + "down_proj.weight": (h, inter)})
    return shapes


def _qwen3_next_layer_types(r: dict[str, Any]) -> list[str]:
    every = r["full_attention_interval"]
    return ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(r["num_hidden_layers"])]


def _qwen3_next_layer(p: str, r: dict[str, Any], layer_type: str) -> dict[str, tuple[int, ...]]:
    """One Qwen3-Next decoder layer as the Hugging Face checkpoint stores it (and vLLM's qwen3_next.py loads
    it): gated full attention (q_proj also emits the output gate) or a gated delta net with fused, GQA-
    interleaved in_proj_qkvz / in_proj_ba; then MoE with a sigmoid-gated shared expert."""
    h = r["hidden_size"]
    shapes: dict[str, tuple[int, ...]] = {p + "input_layernorm.weight": (h,),
                                          p + "post_attention_layernorm.weight": (h,)}
    if layer_type == "full_attention":
        shapes.update(_attention_layout(p, r, 2 * r["num_attention_heads"] * r["head_dim"]))
    else:
        hd, nk, nv = r["linear_head_dim"], r["linear_num_key_heads"], r["linear_num_value_heads"]
        key_dim, value_dim = nk * hd, nv * hd
        a = p + "linear_attn."
        shapes.update({
            a + "in_proj_qkvz.weight": (2 * key_dim + 2 * value_dim, h), a + "in_proj_ba.weight": (2 * nv, h),
            a + "conv1d.weight": (2 * key_dim + value_dim, 1, CONV_KERNEL), a + "dt_bias": (nv,),
            a + "A_log": (nv,), a + "norm.weight": (hd,), a + "out_proj.weight": (h, value_dim),
        })
    shapes.update(_experts_layout(p, r))
    shared = r["shared_expert_intermediate_size"]
    x = p + "mlp.shared_expert."
    shapes.update({x + "gate_proj.weight": (shared, h), x + "up_proj.weight": (shared, h),
                   x + "down_proj.weight": (h, shared), p + "mlp.shared_expert_gate.weight": (1, h)})
    return shapes


def _qwen3_next_layout(r: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Qwen3-Next-80B-A3B's checkpoint layout, MTP layers (`mtp.*`) included: each MTP layer is a full attention
    decoder layer fed fc([norm(embedding), norm(hidden)])."""
    h = r["hidden_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (r["vocab_size"], h), "model.norm.weight": (h,),
        "lm_head.weight": (r["vocab_size"], h),
    }
    for i, kind in enumerate(_qwen3_next_layer_types(r)):
        shapes.update(_qwen3_next_layer(f"model.layers.{i}.", r, kind))
    if r["mtp_layers"]:
        shapes.update({"mtp.fc.weight": (h, 2 * h), "mtp.norm.weight": (h,),
                       "mtp.pre_fc_norm_hidden.weight": (h,), "mtp.pre_fc_norm_embedding.weight": (h,)})
        for j in range(r["mtp_layers"]):
            shapes.update(_qwen3_next_layer(f"mtp.layers.{j}.", r, "full_attention"))
    return shapes


def _qwen3_next_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    """Random weights initialized as transformers' Qwen3-Next does: its RMSNorms scale by (1 + weight), so they
    start at 0, except the delta net's gated norm (plain weight, 1); A_log = log(U(1, 16)); dt_bias = 1."""
    import torch

    state = _random_state(shapes, seed)
    for name, shape in shapes.items():
        if len(shape) == 1 and "norm" in name and not name.endswith("linear_attn.norm.weight"):
            state[name] = torch.zeros(shapes[name], dtype=torch.bfloat16)
        elif name.endswith("A_log"):
            gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
            a = torch.rand(shapes[name], generator=gen, dtype=torch.float32) * 15 + 1
            state[name] = torch.log(a).to(torch.bfloat16)
    return state


def _common_config(r: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    # What transformers 5 writes for these models, plus the flat keys transformers 4.x reads.
    return {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": job["bos_token_id"],
        "eos_token_id": job["eos_token_id"], "pad_token_id": job["pad_token_id"], "dtype": "bfloat16",
        "torch_dtype": "bfloat16", "head_dim": r["head_dim"], "hidden_act": "silu",
        "hidden_size": r["hidden_size"],
        "initializer_range": INIT_STD, "intermediate_size": r["intermediate_size"],
        "max_position_embeddings": r["max_position_embeddings"],
        "num_attention_heads": r["num_attention_heads"],
        "num_hidden_layers": r["num_hidden_layers"], "num_key_value_heads": r["num_key_value_heads"],
        "rms_norm_eps": r["rms_norm_eps"], "rope_theta": r["rope_theta"],
        "rope_parameters": {"rope_theta": r["rope_theta"], "rope_type": "default"},
        "tie_word_embeddings": r["tie_word_embeddings"], "use_cache": True, "vocab_size": r["vocab_size"],
    }


def build_qwen3(job: dict[str, Any]) -> dict[str, Any]:
    r, out = job["recipe"], Path(job["out"])
    config = _common_config(r, job)
    config.update({"sliding_window": None, "use_sliding_window": False,
                   "max_window_layers": r["num_hidden_layers"]})
    if r["architecture"] == "qwen3_moe":
        config.update({
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "decoder_sparse_step": 1,
            "mlp_only_layers": [], "moe_intermediate_size": r["moe_intermediate_size"],
            "norm_topk_prob": True,
            "num_experts": r["num_experts"], "num_local_experts": r["num_experts"],
            "num_experts_per_tok": r["num_experts_per_tok"], "output_router_logits": False,
            "router_aux_loss_coef": 0.001,
        })
    else:
        config.update({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                       "layer_types": ["full_attention"] * r["num_hidden_layers"]})
    return _save(out, _random_state(_qwen3_layout(r), r["seed"]), config)


def build_qwen3_next(job: dict[str, Any]) -> dict[str, Any]:
    """Qwen3NextForCausalLM (config keys as in Qwen3-Next-80B-A3B's config.json) with its MTP layers."""
    r, out = job["recipe"], Path(job["out"])
    config = _common_config(r, job)
    config["rope_parameters"]["partial_rotary_factor"] = PARTIAL_ROTARY
    config.update({
        "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "partial_rotary_factor":
        PARTIAL_ROTARY, "layer_types": _qwen3_next_layer_types(r),
        "full_attention_interval": r["full_attention_interval"], "linear_conv_kernel_dim": CONV_KERNEL,
        "linear_key_head_dim": r["linear_head_dim"], "linear_value_head_dim": r["linear_head_dim"],
        "linear_num_key_heads": r["linear_num_key_heads"], "linear_num_value_heads": r["linear_num_value_heads"],
        "decoder_sparse_step": 1, "mlp_only_layers": [], "moe_intermediate_size": r["moe_intermediate_size"],
        "shared_expert_intermediate_size": r["shared_expert_intermediate_size"], "norm_topk_prob": True,
        "num_experts": r["num_experts"], "num_experts_per_tok": r["num_experts_per_tok"],
        "output_router_logits": False, "router_aux_loss_coef": 0.001, "use_sliding_window": False,
        "num_nextn_predict_layers": r["mtp_layers"],
    })
    return _save(out, _qwen3_next_state(_qwen3_next_layout(r), r["seed"]), config)


def build_eagle3(job: dict[str, Any]) -> dict[str, Any]:
    """LlamaForCausalLMEagle3 layout as vLLM's llama_eagle3.py loads it; embed_tokens come from the target."""
    r, out = job["recipe"], Path(job["out"])
    h, inter, vocab = r["hidden_size"], r["intermediate_size"], r["vocab_size"]
    q, kv = r["num_attention_heads"] * r["head_dim"], r["num_key_value_heads"] * r["head_dim"]
    aux = list(r["eagle_aux_hidden_state_layer_ids"])
    shapes = {
        "fc.weight": (h, h * len(aux)),
        "norm.weight": (h,),
        "lm_head.weight": (vocab, h),
        "midlayer.input_layernorm.weight": (h,),
        "midlayer.hidden_norm.weight": (h,),
        "midlayer.post_attention_layernorm.weight": (h,),
        "midlayer.self_attn.q_proj.weight": (q, 2 * h),  # the draft layer sees [embeds, hidden] concatenated
        "midlayer.self_attn.k_proj.weight": (kv, 2 * h),
        "midlayer.self_attn.v_proj.weight": (kv, 2 * h),
        "midlayer.self_attn.o_proj.weight": (h, q),
        "midlayer.mlp.gate_proj.weight": (inter, h),
        "midlayer.mlp.up_proj.weight": (inter, h),
        "midlayer.mlp.down_proj.weight": (h, inter),
    }
    config = _common_config(r, job)
    config.update({
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "mlp_bias": False,
        "pretraining_tp": 1, "num_hidden_layers": 1, "tie_word_embeddings": False, "draft_vocab_size": vocab,
        "target_hidden_size": h,
        # vLLM's default aux layers for Qwen3 are (2, L//2, L-3): for tiny targets they collide, so name them.
        "eagle_aux_hidden_state_layer_ids": aux,
    })
    return _save(out, _random_state(shapes, r["seed"]), config)


def _save(out: Path, state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    return {"params": sum(t.numel() for t in state.values())}


# --- trained models -------------------------------------------------------------------------------------
# A recipe with "train" set gets its weights trained here instead of drawn at random. The task ids are
# versioned: changing what a task trains on means a new id (the id is part of the recipe digest).

# Same formats and word lists as quantgate.workload.accuracy's generated problem set
# (tests/unit/workload/test_accuracy.py checks).
ARITH_NAMES = ("Ann", "Ben", "Tom", "Sam", "Mia", "Leo")
ARITH_THINGS = ("books", "cards", "stones", "trees", "tokens", "cups")
TRAIN_TASKS: dict[str, dict[str, Any]] = {
    # single-digit sums and differences, two-digit sums, one-line word problems. Weighted towards the two
    # harder categories (single digits are learnt within ~200 steps); ~3 min on 2 cores for qwen3-arith.
    "arith-v2": {"steps": 900, "batch": 64, "lr": 3e-3, "warmup": 30, "weight_decay": 0.01,
                 "mix": {"add1": 0.1, "sub1": 0.1, "add2": 0.45, "word": 0.35}},
}
TRAIN_THREADS = 2  # fixed, so the float reductions (and the bytes) are the same on a bigger machine
# Same seed and same torch build => the same weights, byte for byte; another torch version (or CPU ISA,
# whose kernels may sum in another order) can give slightly different weights, hence other accuracy.


def arith_example(rng: random.Random, category: str) -> tuple[str, str]:
    """(prompt, answer) in the accuracy set's formats: "12 + 7 =" -> "19"; word problems end in "Answer:"."""
    if category == "add1":
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), "+"
    elif category == "sub1":
        a, b = sorted((rng.randint(0, 9), rng.randint(0, 9)), reverse=True)
        op = "-"
    elif category == "add2":
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), "+"
    elif category == "word":
        op = rng.choice("+-")
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if op == "-":
            a, b = max(a, b), min(a, b)
        name, thing = rng.choice(ARITH_NAMES), rng.choice(ARITH_THINGS)
        verb = f"gets {b} more" if op == "+" else f"gives away {b}"
        value = a + b if op == "+" else a - b
        return f"{name} has {a} {thing} and {verb}. How many {thing} now? Answer:", str(value)
    else:
        raise ValueError(f"unknown arithmetic category {category!r}")
    return f"{a} {op} {b} =", str(a + b if op == "+" else a - b)


def _qwen3_config(r: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    config = _common_config(r, job)
    config.update({"sliding_window": None, "use_sliding_window": False,
                   "max_window_layers": r["num_hidden_layers"], "architectures": ["Qwen3ForCausalLM"],
                   "model_type": "qwen3", "layer_types": ["full_attention"] * r["num_hidden_layers"]})
    return config


def build_trained(job: dict[str, Any]) -> dict[str, Any]:
    """Train a dense Qwen3 (transformers' own module, so the checkpoint is exactly what vLLM loads) on
    generated text of the recipe's task, then save it in bf16. Deterministic for a seed: the data come
    from random.Random(seed), the initialization from torch.manual_seed(seed), the thread count is fixed."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    r, out = job["recipe"], Path(job["out"])
    if r["architecture"] != "qwen3":
        raise SystemExit(f"train={r['train']!r}: only dense qwen3 recipes can be trained")
    task = TRAIN_TASKS.get(r["train"])
    if task is None:
        raise SystemExit(f"unknown training task {r['train']!r} (known: {', '.join(TRAIN_TASKS)})")
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(r["seed"])
    tok = Tokenizer.from_file(str(Path(job["tokenizer"]) / "tokenizer.json"))
    eos, pad = job["eos_token_id"], job["pad_token_id"]

    config = _qwen3_config(r, job)
    hf_config = Qwen3Config(**{k: v for k, v in config.items() if k not in ("architectures", "dtype",
                                                                          "torch_dtype")})
    model = Qwen3ForCausalLM(hf_config).float()
    model.train()
    rng = random.Random(f"quantgate-train:{r['train']}:{r['seed']}")
    categories, weights = zip(*task["mix"].items(), strict=True)
    cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def encode(prompt: str, answer: str) -> tuple[list[int], list[int]]:
        key = (prompt, answer)
        if key not in cache:
            cache[key] = (tok.encode(prompt).ids, tok.encode(" " + answer).ids + [eos])
        return cache[key]

    def batch() -> tuple[Any, Any]:
        rows = [encode(*arith_example(rng, rng.choices(categories, weights)[0])) for _ in range(task["batch"])]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, a) in enumerate(rows):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            # position t predicts token t+1: label the answer tokens (and the EOS) at the position before
            labels[i, len(p) - 1: len(seq) - 1] = torch.tensor(a)
        return ids, labels

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": task["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=task["lr"], betas=(0.9, 0.98))
    steps, warmup = task["steps"], task["warmup"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = task["lr"] * lr_at(step)
        ids, labels = batch()
        # right padding: causal attention never lets a real token see a pad, so no mask is needed
        hidden = model.model(input_ids=ids).last_hidden_state
        mask = labels != -100
        logits = model.lm_head(hidden[mask])  # only where there is a label: most of the vocab matmul saved
        loss = torch.nn.functional.cross_entropy(logits, labels[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)

    names = set(_qwen3_layout(r))
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if k in names}
    missing = names - set(state)
    if missing:
        raise SystemExit(f"trained model lacks tensors {sorted(missing)[:5]}")
    result = _save(out, state, config)
    result.update({"train": r["train"], "train_steps": steps, "train_seconds": round(time.perf_counter() - t0, 3),
                   "first_loss": round(losses[0], 5), "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5)})
    return result


def build_model(job: dict[str, Any]) -> dict[str, Any]:
    import safetensors
    import torch

    if job["recipe"].get("train"):
        result = build_trained(job)
    else:
        builders = {"eagle3": build_eagle3, "qwen3_next": build_qwen3_next}
        result = builders.get(job["recipe"]["architecture"], build_qwen3)(job)
    result["versions"] = {"torch": torch.__version__, "safetensors": safetensors.__version__}
    return result


def main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    t0 = time.perf_counter()
    try:
        result = build_tokenizer(job) if job["kind"] == "tokenizer" else build_model(job)
    except ImportError as exc:
        print(f"quantgate model builder: {exc}; this interpreter ({sys.executable}) needs torch, "
              f"tokenizers and safetensors (pip install 'quantgate[cpu]')", file=sys.stderr)
        return 3
    result["seconds"] = round(time.perf_counter() - t0, 3)
    print("QUANTGATE_RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
