"""quantgate.models.shapes: full-size model shapes (config.json + full-vocabulary tokenizer) served with dummy
weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantgate.config.matrix import EngineConfig, load_matrix
from quantgate.engine import process as engine
from quantgate.models import shapes
from quantgate.models.recipes import ModelError
from quantgate.report import roofline

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_every_shape_quantization_gives_a_config_vllm_can_read(name: str) -> None:
    shape = shapes.SHAPES[name]
    for quant in shape.quantizations:
        cfg = shapes.ShapeSpec(name, quant).config_json()
        assert cfg["vocab_size"] == shape.vocab_size and cfg["architectures"]
        qc = cfg.get("quantization_config")
        if quant == "bf16":
            assert qc is None
        elif quant == "mxfp4":
            assert qc["quant_method"] == "mxfp4"
        else:  # compressed-tensors: the router and the head stay bf16, as llmcompressor's recipes keep them
            assert qc["quant_method"] == "compressed-tensors"
            assert {"lm_head", "re:.*mlp.gate$"} <= set(qc["ignore"])
        if "layer_types" in cfg:
            assert len(cfg["layer_types"]) == cfg["num_hidden_layers"]
        json.dumps(cfg)


def test_a3b_shape_is_the_public_architecture() -> None:
    a3b = shapes.SHAPES["qwen3-coder-30b-a3b"].config
    active, _ = roofline.param_counts(a3b)
    assert 3.0e9 < active < 3.4e9  # "A3B"
    assert (a3b["num_hidden_layers"], a3b["num_experts"], a3b["num_experts_per_tok"]) == (48, 128, 8)
    oss = shapes.SHAPES["gpt-oss-120b"].config
    assert oss["layer_types"][:2] == ["sliding_attention", "full_attention"] and oss["vocab_size"] == 201088
    nxt = shapes.SHAPES["qwen3-next-80b-a3b"].config
    assert nxt["layer_types"].count("full_attention") == 12 and nxt["num_nextn_predict_layers"] == 1


def test_w4a8_is_what_vllm_routes_to_cutlass_w4a8_on_sm90() -> None:
    # compressed_tensors._is_fp8_w4a8: int4 group weights, static; fp8 per-token dynamic activations
    group = shapes.QUANT_CONFIGS["w4a8"]["config_groups"]["group_0"]
    w, a = group["weights"], group["input_activations"]
    assert (w["num_bits"], w["strategy"], w["dynamic"], w["group_size"]) == (4, "group", False, 128)
    assert (a["num_bits"], a["type"], a["strategy"], a["dynamic"]) == (8, "float", "token", True)
    nvfp4 = shapes.QUANT_CONFIGS["nvfp4"]["config_groups"]["group_0"]["weights"]
    assert (nvfp4["strategy"], nvfp4["group_size"], nvfp4["type"]) == ("tensor_group", 16, "float")


def test_spec_from_table_errors_name_the_place() -> None:
    with pytest.raises(ModelError, match=r"sm90.toml: config 'x'.*unknown shape 'nope'"):
        shapes.spec_from_table({"shape": "nope"}, where="sm90.toml: config 'x'")
    with pytest.raises(ModelError, match="has no quantization 'w8a8'"):
        shapes.spec_from_table({"shape": "qwen3-8b", "quantization": "w8a8"})
    with pytest.raises(ModelError, match="unknown shape key"):
        shapes.spec_from_table({"shape": "qwen3-8b", "layers": 2})
    # vLLM's online fp8 serves the bf16 shape; gpt-oss defaults to its native MXFP4
    assert shapes.spec_from_table({"shape": "qwen3-8b"}, quantization="fp8").quantization == "bf16"
    assert shapes.spec_from_table({"shape": "gpt-oss-120b"}).quantization == "mxfp4"


def test_built_folder_has_a_tokenizer_covering_every_id(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    spec = shapes.spec_from_table({"shape": "qwen3-coder-30b-a3b", "quantization": "w4a16"})
    folder = shapes.ensure_shape(spec, tmp_path)
    assert shapes.is_shape_folder(folder) and folder.parent.name == "shapes"
    assert shapes.ensure_shape(spec, tmp_path) == folder  # cached by digest
    cfg = json.loads((folder / "config.json").read_text())
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    vocab = cfg["vocab_size"]
    assert len(tok) == vocab  # every prompt id quantgate draws (< vocab_size) is a token vLLM accepts
    assert tok.convert_ids_to_tokens([0, 1, 2, vocab - 1]) == ["<unk>", "<s>", "</s>", f"t{vocab - 1}"]
    assert tok.decode([7, vocab - 1]) == f"t7 t{vocab - 1}"
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg["bos_token_id"], cfg["eos_token_id"])
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 << 20  # cheap to carry


def test_a_shape_config_is_served_with_dummy_weights() -> None:
    cfg = EngineConfig(id="a", model={"shape": "qwen3-8b"}, quantization="bf16", hardware=("sm90",))
    cmd = engine.serve_command(cfg, engine.ResolvedModels("/m"), 8000)
    assert cmd[cmd.index("--load-format") + 1] == "dummy"
    recipe = EngineConfig(id="b", model={"recipe": "qwen3-dense"}, quantization="bf16", hardware=("cpu",))
    assert "--load-format" not in engine.serve_command(recipe, engine.ResolvedModels("/m"), 8000)


def test_sm90_matrix_is_the_full_shape_lane() -> None:
    m = load_matrix(REPO / "fixtures" / "matrix" / "sm90.toml")
    shaped = [c for c in m.configs if shapes.is_shape_spec(c.model)]
    toys = [c for c in m.configs if not shapes.is_shape_spec(c.model)]
    assert len(shaped) >= 10
    for c in shaped:
        shapes.spec_from_table(c.model, where=c.source, quantization=c.quantization)
    # a toy model only where no shape covers the path: a draft or EAGLE3 head must match its target
    assert {c.speculative.method for c in toys if c.speculative} == {"draft_model", "eagle3"}
    assert len(toys) == 2
