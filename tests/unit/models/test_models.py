"""quantgate.models.recipes and quantgate.models.cache: recipe validation, digests, and real (small) builds with the
cache's guarantees."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quantgate.models import cache as model_cache
from quantgate.models import recipes as models
from quantgate.models.cache import ensure_model
from quantgate.models.recipes import RECIPES, ModelError, ModelRecipe, recipe_from_spec

WHERE = "fixtures/matrix/cpu.toml: config 'w4a16'"
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("tokenizers") is None,
    reason="model builds need transformers and tokenizers in this interpreter (pip install 'quantgate[cpu]')",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small(**changes: object) -> ModelRecipe:
    """qwen3-dense with 2 layers: the smallest model the tests build."""
    return dataclasses.replace(RECIPES["qwen3-dense"], num_hidden_layers=2, **changes)


# --- recipes ----------------------------------------------------------------------------------------

def test_named_recipes() -> None:
    dense, moe, eagle = RECIPES["qwen3-dense"], RECIPES["qwen3-moe"], RECIPES["eagle3-qwen3-dense"]
    assert (dense.architecture, dense.num_hidden_layers, dense.hidden_size, dense.num_attention_heads,
            dense.num_key_value_heads, dense.head_dim, dense.intermediate_size, dense.vocab_size,
            dense.max_position_embeddings, dense.tie_word_embeddings, dense.quantization, dense.seed) == (
        "qwen3", 4, 256, 4, 2, 64, 768, 4096, 32768, True, None, 42)
    assert (moe.architecture, moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (
        "qwen3_moe", 8, 2, 256)
    assert (eagle.architecture, eagle.eagle_target, eagle.eagle_aux_hidden_state_layer_ids) == (
        "eagle3", "qwen3-dense", (1, 2, 3))
    models.check_draft(eagle, dense)


def test_spec_overrides_and_quantization_spellings() -> None:
    spec = {"recipe": "qwen3-dense", "quantization": "w4a16", "seed": 7, "num_hidden_layers": 2}
    r = recipe_from_spec(spec)
    assert (r.name, r.quantization, r.seed, r.num_hidden_layers) == ("qwen3-dense", "w4a16", 7, 2)
    assert recipe_from_spec({"recipe": "qwen3-dense", "quantization": "bf16"}).quantization is None
    fp8 = recipe_from_spec({"recipe": "qwen3-dense", "quantization": "FP8_DYNAMIC"})
    assert fp8.quantization == "fp8-dynamic"
    assert recipe_from_spec({"recipe": "qwen3-dense", "rope_theta": 10000}).rope_theta == 10000.0
    assert r.base() == dataclasses.replace(r, quantization=None)
    assert recipe_from_spec({"recipe": "qwen3-dense"}, quantization="w8a8").quantization == "w8a8"
    same = recipe_from_spec({"recipe": "qwen3-dense", "quantization": "bf16"}, quantization="bf16")
    assert same.quantization is None
    with pytest.raises(ModelError, match="quantization 'w4a16' contradicts the config's quantization 'bf16'"):
        recipe_from_spec({"recipe": "qwen3-dense", "quantization": "w4a16"}, quantization="bf16", where=WHERE)
    expected = dataclasses.replace(RECIPES["qwen3-moe"], quantization="w8a8")
    assert models.recipe_from_name("qwen3-moe:w8a8") == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"recipe": "qwen4-dense"}, ["unknown model recipe 'qwen4-dense'", "qwen3-dense", "qwen3-moe"]),
        ({"recipe": "qwen3-dense", "hidden": 512}, ["unknown model key(s) 'hidden'", "hidden_size"]),
        ({"recipe": "qwen3-dense", "hidden_size": 200}, ["hidden_size=200", "multiple of 128"]),
        ({"recipe": "qwen3-dense", "intermediate_size": 700}, ["intermediate_size=700", "multiple of 128"]),
        ({"recipe": "qwen3-dense", "head_dim": 48}, ["num_attention_heads*head_dim=192", "multiple of 128"]),
        ({"recipe": "qwen3-moe", "moe_intermediate_size": 100},
         ["moe_intermediate_size=100", "multiple of 128"]),
        ({"recipe": "qwen3-dense", "quantization": "int3"}, ["quantization 'int3'", "w4a16", "fp8-dynamic"]),
        ({"recipe": "eagle3-qwen3-dense", "quantization": "w8a8"}, ["'w8a8'", "bf16 only"]),
        ({"recipe": "qwen3-dense", "seed": "42"}, ["'seed' must be an integer", "'42'"]),
        ({"recipe": "qwen3-dense", "num_hidden_layers": True}, ["'num_hidden_layers' must be an integer"]),
        ({"recipe": "qwen3-dense", "num_hidden_layers": 0}, ["num_hidden_layers=0", "positive"]),
        ({"recipe": "qwen3-dense", "num_key_value_heads": 3},
         ["num_attention_heads=4", "num_key_value_heads=3"]),
        ({"recipe": "qwen3-dense", "num_experts": 8}, ["num_experts=8", "qwen3_moe"]),
        ({"recipe": "qwen3-moe", "num_experts_per_tok": 9}, ["num_experts_per_tok=9", "1..num_experts (8)"]),
        ({"recipe": "eagle3-qwen3-dense", "eagle_aux_hidden_state_layer_ids": [1, 2, 4]},
         ["layer 4", "4 layers"]),
        ({"recipe": "eagle3-qwen3-dense", "hidden_size": 512}, ["hidden_size=512 differs", "'qwen3-dense'"]),
        ({"recipe": "qwen3-dense", "vocab_size": 100}, ["vocab_size=100"]),
        ({"recipe": "qwen3-dense", "mtp_layers": 1}, ["mtp_layers=1", "qwen3_next"]),
        ({"recipe": "qwen3-next", "quantization": "w4a16"}, ["'w4a16'", "bf16 only", "--quantization fp8"]),
        ({"recipe": "qwen3-next", "linear_num_value_heads": 3},
         ["linear_num_value_heads=3", "linear_num_key_heads=2"]),
        ({"recipe": "qwen3-next", "full_attention_interval": 5}, ["full_attention_interval=5", "4 layers"]),
        ({"recipe": "qwen3-next", "mtp_layers": -1}, ["mtp_layers=-1", ">= 0"]),
        ({"recipe": "qwen3-next", "num_experts": 0}, ["num_experts=0", ">= 2"]),
        ({"recipe": "qwen3-next", "linear_head_dim": 0}, ["linear_head_dim=0", "positive"]),
    ],
)
def test_spec_errors_name_the_place_and_the_value(spec: dict, expected: list[str]) -> None:
    with pytest.raises(ModelError) as info:
        recipe_from_spec(spec, where=WHERE)
    message = str(info.value)
    assert message.startswith(WHERE + ": ")
    for part in expected:
        assert part in message
    assert "\n" not in message


def test_spec_must_be_a_table() -> None:
    with pytest.raises(ModelError, match="must be a table"):
        recipe_from_spec("qwen3-dense", where=WHERE)  # type: ignore[arg-type]


def test_check_draft_against_a_shallower_target() -> None:
    target = recipe_from_spec({"recipe": "qwen3-dense", "num_hidden_layers": 2})
    with pytest.raises(ModelError, match=r"name layer 3, but target 'qwen3-dense' has 2 layers"):
        models.check_draft(RECIPES["eagle3-qwen3-dense"], target)


def test_digest_is_stable_across_processes() -> None:
    recipe = recipe_from_spec({"recipe": "qwen3-moe", "quantization": "w4a16", "seed": 3})
    code = ("from quantgate.models.recipes import recipe_from_spec as r; "
            "print(r({'recipe': 'qwen3-moe', 'quantization': 'w4a16', 'seed': 3}).digest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == recipe.digest()
    reordered = recipe_from_spec({"recipe": "qwen3-moe", "seed": 3, "quantization": "w4a16"})
    assert recipe.digest() == reordered.digest()
    assert len(recipe.digest()) == 64


def test_digest_changes_with_every_field() -> None:
    base = RECIPES["qwen3-dense"]
    variants = [
        dataclasses.replace(base, seed=43),
        dataclasses.replace(base, num_hidden_layers=2),
        dataclasses.replace(base, intermediate_size=512),
        dataclasses.replace(base, quantization="w4a16"),
        dataclasses.replace(base, rms_norm_eps=1e-5),
        dataclasses.replace(base, tie_word_embeddings=False),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == len(variants) + 1
    d = base.digest()
    assert base.dir_name == f"qwen3-dense-bf16-{d[:12]}"
    assert variants[3].dir_name.startswith("qwen3-dense-w4a16-")


def test_builder_version_is_in_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    before = RECIPES["qwen3-dense"].digest()
    monkeypatch.setattr(models, "BUILDER_VERSION", models.BUILDER_VERSION + 1)
    assert RECIPES["qwen3-dense"].digest() != before


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUANTGATE_MODEL_CACHE", str(tmp_path / "c"))
    assert model_cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("QUANTGATE_MODEL_CACHE")
    assert model_cache.default_cache_dir() == Path.home() / ".cache" / "quantgate" / "models"


@pytest.mark.fault("security", "a .venv-quant/bin/python planted in the working directory or a parent (/tmp)",
                   "never run: the quantizer comes only from QUANTGATE_QUANT_PYTHON, beside the running venv, "
                   "or quantgate's checkout")
def test_find_quant_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUANTGATE_QUANT_PYTHON", raising=False)
    planted = tmp_path / ".venv-quant" / "bin" / "python"
    planted.parent.mkdir(parents=True)
    planted.write_text("")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    monkeypatch.setattr("sys.prefix", str(tmp_path / "elsewhere" / ".venv"))
    monkeypatch.setattr(model_cache, "_checkout_root", lambda: None)
    assert model_cache.find_quant_python() is None
    monkeypatch.chdir(tmp_path)
    assert model_cache.find_quant_python() is None
    checkout = tmp_path / "checkout"
    (checkout / ".venv-quant" / "bin").mkdir(parents=True)
    (checkout / ".venv-quant" / "bin" / "python").write_text("")
    monkeypatch.setattr(model_cache, "_checkout_root", lambda: checkout)
    assert model_cache.find_quant_python() == checkout / ".venv-quant" / "bin" / "python"
    monkeypatch.setenv("QUANTGATE_QUANT_PYTHON", str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="QUANTGATE_QUANT_PYTHON=.*nope does not exist"):
        model_cache.find_quant_python()


def test_quantizer_is_found_beside_the_running_venv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    quant = tmp_path / "repo" / ".venv-quant" / "bin"
    quant.mkdir(parents=True)
    (quant / "python").write_text("")
    monkeypatch.delenv("QUANTGATE_QUANT_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)  # pytest started elsewhere, e.g. a pytester folder
    monkeypatch.setattr("sys.prefix", str(tmp_path / "repo" / ".venv"))
    assert model_cache.find_quant_python() == quant / "python"


def test_quantized_recipe_without_quantizer_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.delenv("QUANTGATE_QUANT_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)  # no .venv-quant here or above (tmp_path is outside the repo)
    monkeypatch.setattr("sys.prefix", str(tmp_path / "venv"))  # nor beside the running interpreter's venv
    # nor in quantgate's own checkout (a clean clone after scripts/setup-cpu.sh has one there: CI)
    monkeypatch.setattr("quantgate.models.cache._checkout_root", lambda: tmp_path / "checkout")
    recipe = recipe_from_spec({"recipe": "qwen3-dense", "quantization": "w4a16"})
    with pytest.raises(ModelError) as info:
        ensure_model(recipe, tmp_path / "cache")
    message = str(info.value)
    assert "'qwen3-dense'" in message and "'w4a16'" in message
    assert "scripts/setup-cpu.sh" in message and "QUANTGATE_QUANT_PYTHON" in message
    assert "\n" not in message
    assert not (tmp_path / "cache").exists()  # nothing was built, not even the base


def test_failed_build_leaves_no_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken_worker.py"
    broken.write_text("import json, sys, pathlib\n"
                      "job = json.loads(sys.argv[1])\n"
                      "pathlib.Path(job['out'], 'tokenizer.json').write_text('half')\n"
                      "print('boom: out of luck', file=sys.stderr)\n"
                      "sys.exit(7)\n")
    monkeypatch.setattr(model_cache, "BUILD_WORKER", broken)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as info:
        ensure_model(small(), cache)
    message = str(info.value)
    assert "exit 7" in message and "boom: out of luck" in message and "full log:" in message
    tok_parent = cache / "tokenizers"
    assert [p.name for p in tok_parent.iterdir() if not p.name.startswith(".")] == []
    assert not list(tok_parent.glob(".tmp-*"))
    assert list((cache / ".logs").glob("bytebpe-*.log"))


# --- real builds --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def dense(cache: Path) -> Path:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("model builds need transformers in this interpreter (pip install 'quantgate[cpu]')")
    return ensure_model(small(), cache)


@needs_transformers
def test_dense_build_is_a_servable_folder(dense: Path) -> None:
    recipe = small()
    assert dense.name == recipe.dir_name
    names = {p.name for p in dense.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", models.MANIFEST} <= names
    assert not [n for n in names if n.startswith(".")]  # no scratch left behind
    config = json.loads((dense / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    dims = (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"], config["eos_token_id"])
    assert dims == (2, 256, 4096, models.EOS_ID)
    assert config["max_position_embeddings"] == 32768 and config["tie_word_embeddings"] is True
    manifest = json.loads((dense / models.MANIFEST).read_text())
    assert manifest["digest"] == recipe.digest() and manifest["recipe"]["num_hidden_layers"] == 2
    assert json.loads((dense / "generation_config.json").read_text())["eos_token_id"] == models.EOS_ID

    from safetensors import safe_open

    with safe_open(str(dense / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in keys)
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [4096, 256]
    assert "lm_head.weight" not in keys  # tied
    assert "model.layers.1.mlp.down_proj.weight" in keys and "model.layers.2.mlp.down_proj.weight" not in keys


@needs_transformers
def test_tokenizer_has_chatml_specials_and_single_digits(dense: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dense / "tokenizer.json"))
    assert tok.get_vocab_size() == 4096
    assert [tok.token_to_id(t) for t in models.SPECIAL_TOKENS] == [0, 1, 2]
    enc = tok.encode("12 + 7 = 19")
    # Digits are single tokens (Qwen's pre-tokenizer split), which the arithmetic model needs.
    assert [t for t in enc.tokens if t.isdigit()] == ["1", "2", "7", "1", "9"]
    assert tok.decode(enc.ids) == "12 + 7 = 19"
    cfg = json.loads((dense / "tokenizer_config.json").read_text())
    assert (cfg["eos_token"], cfg["pad_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert cfg["model_max_length"] == 32768
    assert "<|im_start|>" in cfg["chat_template"]


@needs_transformers
def test_transformers_loads_and_runs_it(dense: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dense)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 0)
    model, info = AutoModelForCausalLM.from_pretrained(dense, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched tensors
    assert model.dtype == torch.bfloat16
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 4096) and torch.isfinite(logits).all()


@needs_transformers
def test_moe_checkpoint_matches_transformers_layout(cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    recipe = recipe_from_spec({"recipe": "qwen3-moe", "num_hidden_layers": 1})
    path = ensure_model(recipe, cache)
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    assert type(model).__name__ == "Qwen3MoeForCausalLM" and model.config.num_experts == 8
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


@needs_transformers
def test_cache_hit_builds_nothing(dense: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = (dense / "model.safetensors").stat().st_mtime_ns

    def no_builds(*args: object, **kwargs: object) -> dict:
        raise AssertionError("a cached model was built again")

    monkeypatch.setattr(model_cache, "_run_worker", no_builds)
    assert ensure_model(small(), cache) == dense
    lines: list[str] = []
    [report] = model_cache.build_all([small()], cache, log=lines.append)
    assert (report.path, report.built) == (dense, False)
    assert lines and lines[-1].startswith("cached")
    assert model_cache.cached_model(small(), cache) == dense
    assert model_cache.cached_model(small(seed=1), cache) is None
    assert (dense / "model.safetensors").stat().st_mtime_ns == mtime


@needs_transformers
def test_same_recipe_same_bytes_in_another_cache(dense: Path, tmp_path: Path) -> None:
    again = ensure_model(small(), tmp_path / "other-cache")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert sha256(again / name) == sha256(dense / name), name


@needs_transformers
def test_killed_build_leftovers_are_cleaned_and_seed_changes_weights(dense: Path, cache: Path) -> None:
    recipe = small(seed=43)
    final = cache / recipe.dir_name
    leftover = cache / f".tmp-{recipe.dir_name}-999999-deadbeef"  # what a build killed mid-way leaves
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    final.mkdir()  # a damaged folder without its manifest is not trusted
    (final / "config.json").write_text("{}")
    assert model_cache.cached_model(recipe, cache) is None

    assert ensure_model(recipe, cache) == final
    assert not leftover.exists()
    assert (final / models.MANIFEST).is_file()
    assert sha256(final / "model.safetensors") != sha256(dense / "model.safetensors")
    assert sha256(final / "tokenizer.json") == sha256(dense / "tokenizer.json")
    assert len([p for p in (cache / "tokenizers").iterdir() if not p.name.startswith(".")]) == 1  # shared


@needs_transformers
def test_concurrent_builders_build_once(dense: Path, cache: Path) -> None:
    recipe = small(seed=44)
    lines: list[str] = []
    paths: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            paths.append(ensure_model(recipe, cache, log=lines.append))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert paths == [cache / recipe.dir_name] * 3
    assert len([ln for ln in lines if ln.startswith("built ")]) == 1


@needs_transformers
def test_eagle3_draft_layout(cache: Path) -> None:
    draft = ensure_model(RECIPES["eagle3-qwen3-dense"], cache)
    config = json.loads((draft / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert (config["num_hidden_layers"], config["hidden_size"], config["draft_vocab_size"]) == (1, 256, 4096)
    from safetensors import safe_open

    with safe_open(str(draft / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - not a dict
    assert shapes["fc.weight"] == [256, 768]
    assert shapes["midlayer.self_attn.q_proj.weight"] == [256, 512]
    assert shapes["lm_head.weight"] == [4096, 256]
    assert not [k for k in shapes if "embed_tokens" in k]  # vLLM shares the target's


@needs_transformers
def test_w4a16_build(dense: Path, cache: Path) -> None:
    if model_cache.find_quant_python() is None:
        pytest.skip("no quantizer interpreter: run scripts/setup-cpu.sh or set QUANTGATE_QUANT_PYTHON")
    recipe = small(quantization="w4a16")
    path = ensure_model(recipe, cache)
    assert path.name.startswith("qwen3-dense-w4a16-")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 128, True)
    assert "lm_head" in qc["ignore"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert sha256(path / name) == sha256(dense / name)
    manifest = json.loads((path / models.MANIFEST).read_text())
    assert manifest["base"] == dense.name and manifest["scheme"] == "W4A16"
    assert "llmcompressor" in manifest["versions"]
    assert (path / "model.safetensors").stat().st_size < (dense / "model.safetensors").stat().st_size


# --- the trained arithmetic model (qwen3-arith) ----------------------------------------------------------

def test_existing_digests_are_pinned() -> None:
    """Adding `train` to ModelRecipe must not move the random-weight recipes' cache folders."""
    assert RECIPES["qwen3-dense"].dir_name == "qwen3-dense-bf16-77da8d80e271"
    assert RECIPES["qwen3-moe"].dir_name == "qwen3-moe-bf16-17f2e927b900"
    assert RECIPES["eagle3-qwen3-dense"].dir_name == "eagle3-qwen3-dense-bf16-bda2bb9c78b1"
    assert RECIPES["qwen3-next"].dir_name == "qwen3-next-bf16-603539f4668a"
    assert "train" not in RECIPES["qwen3-dense"].to_dict()
    assert "mtp_layers" not in RECIPES["qwen3-moe"].to_dict()  # nor the later qwen3_next fields


def test_arith_recipe() -> None:
    arith = RECIPES["qwen3-arith"]
    assert (arith.architecture, arith.train, arith.hidden_size, arith.vocab_size) == ("qwen3", "arith-v2", 128, 4096)
    assert arith.to_dict()["train"] == "arith-v2"
    untrained = dataclasses.replace(arith, train=None)
    assert arith.digest() != untrained.digest()
    w8a8 = recipe_from_spec({"recipe": "qwen3-arith", "quantization": "w8a8"})
    assert w8a8.base() == arith and w8a8.dir_name.startswith("qwen3-arith-w8a8-")
    with pytest.raises(ModelError, match=r"train='nope' is not one of arith-v2"):
        dataclasses.replace(arith, train="nope")
    with pytest.raises(ModelError, match="only dense qwen3 recipes can be trained"):
        dataclasses.replace(RECIPES["qwen3-moe"], train="arith-v2")
    with pytest.raises(ModelError, match="unknown model key"):
        recipe_from_spec({"recipe": "qwen3-dense", "train": "arith-v2"})


@needs_transformers
@pytest.mark.timeout(900)  # two training runs: 245 s on a loaded 2-core box, close to the ini's 300 s
def test_trained_build_is_deterministic_and_loads(dense: Path, cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The training step itself, in-process and cut to 30 steps of a 1-layer model (the real one takes ~3 min)."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantgate.models import _build_model

    monkeypatch.setitem(_build_model.TRAIN_TASKS, "arith-v2",
                        dict(_build_model.TRAIN_TASKS["arith-v2"], steps=30, batch=16))
    recipe = dataclasses.replace(RECIPES["qwen3-arith"], num_hidden_layers=1).to_dict()
    tok = model_cache.ensure_tokenizer(4096, cache)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        job = {"kind": "model", "out": str(out), "recipe": recipe, "tokenizer": str(tok), "bos_token_id": 0,
               "eos_token_id": 2, "pad_token_id": 0}
        result = _build_model.build_model(job)
        assert result["train"] == "arith-v2" and result["train_steps"] == 30
        # it learns: from ln(4096) = 8.3 nats (uniform over the vocab) to the few answer digits
        assert result["first_loss"] > 7.5 and result["final_loss"] < 5.5, result
        outs.append(out)
    assert sha256(outs[0] / "model.safetensors") == sha256(outs[1] / "model.safetensors")
    assert sha256(outs[0] / "model.safetensors") != sha256(dense / "model.safetensors")
    model, info = AutoModelForCausalLM.from_pretrained(outs[0], output_loading_info=True)
    assert not any(info.values()), info
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.dtype == torch.bfloat16


# --- Qwen3-Next with an MTP layer (qwen3-next), for speculative method "mtp" ---------------------------------

def test_qwen3_next_recipe() -> None:
    nxt = RECIPES["qwen3-next"]
    assert (nxt.architecture, nxt.num_hidden_layers, nxt.hidden_size, nxt.tie_word_embeddings, nxt.mtp_layers,
            nxt.full_attention_interval, nxt.num_experts, nxt.shared_expert_intermediate_size) == (
        "qwen3_next", 4, 256, False, 1, 4, 8, 256)
    assert nxt.to_dict()["mtp_layers"] == 1
    assert dataclasses.replace(nxt, mtp_layers=0).digest() != nxt.digest()
    assert recipe_from_spec({"recipe": "qwen3-next", "mtp_layers": 2}).mtp_layers == 2


@needs_transformers
def test_qwen3_next_checkpoint_has_what_vllm_loads(cache: Path) -> None:
    """The names and shapes vLLM's qwen3_next.py and qwen3_next_mtp.py load (an engine start fails on a missing
    or unexpected tensor; tests/e2e starts one), and transformers loads the target part cleanly."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = ensure_model(RECIPES["qwen3-next"], cache)
    config = json.loads((path / "config.json").read_text())
    assert (config["architectures"], config["model_type"]) == (["Qwen3NextForCausalLM"], "qwen3_next")
    assert config["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert (config["num_nextn_predict_layers"], config["tie_word_embeddings"]) == (1, False)
    assert (config["linear_num_key_heads"], config["linear_num_value_heads"], config["linear_key_head_dim"],
            config["linear_conv_kernel_dim"], config["shared_expert_intermediate_size"]) == (2, 4, 64, 4, 256)
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.25

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - not a dict
        mtp_norm = f.get_tensor("mtp.pre_fc_norm_hidden.weight")
        gated_norm = f.get_tensor("model.layers.0.linear_attn.norm.weight")
    # the MTP head: fc over [norm(embedding), norm(hidden)], one gated-attention MoE layer, final norm
    assert shapes["mtp.fc.weight"] == [256, 512]
    for name in ("mtp.norm.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.pre_fc_norm_embedding.weight"):
        assert shapes[name] == [256]
    assert shapes["mtp.layers.0.self_attn.q_proj.weight"] == [512, 256]  # query and output gate
    assert shapes["mtp.layers.0.mlp.shared_expert_gate.weight"] == [1, 256]
    assert shapes["mtp.layers.0.mlp.experts.7.down_proj.weight"] == [256, 256]
    assert not [k for k in shapes if k.startswith("mtp.") and ("embed_tokens" in k or "lm_head" in k)]  # shared
    assert not [k for k in shapes if k.startswith("mtp.layers.1.")]
    # gated delta net layers (key dim 2x64, value dim 4x64) and the one full attention layer
    assert shapes["model.layers.0.linear_attn.in_proj_qkvz.weight"] == [768, 256]
    assert shapes["model.layers.0.linear_attn.in_proj_ba.weight"] == [8, 256]
    assert shapes["model.layers.0.linear_attn.conv1d.weight"] == [512, 1, 4]
    assert shapes["model.layers.2.linear_attn.A_log"] == [4]
    assert "model.layers.3.linear_attn.A_log" not in shapes and "model.layers.3.self_attn.q_norm.weight" in shapes
    assert shapes["lm_head.weight"] == [4096, 256]
    # RMSNorms scale by (1 + weight) in Qwen3-Next, the delta net's gated norm by weight
    assert torch.count_nonzero(mtp_norm) == 0 and bool((gated_norm == 1).all())

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    assert type(model).__name__ == "Qwen3NextForCausalLM"
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 33]])).logits).all()
