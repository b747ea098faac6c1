"""The kernel parser and the engine figures on real H200 logs of the full-shape lane (vLLM 0.26.0, dummy
weights at full size; fixtures/logs/cuda/README.md). Each log is the engine that recorded baselines/sm90-h200/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantgate.engine.figures import engine_figures
from quantgate.kernels.parse import parse_log_file
from quantgate.session import kernel_snapshot_dict

REPO = Path(__file__).resolve().parents[3]
CUDA = REPO / "fixtures" / "logs" / "cuda"

EXPECTED: dict[str, dict[str, object]] = {
    # Hopper: Machete for the linear layers, Marlin WNA16 for the experts
    "sm90-a3b-w4a16": {"linear_kernels": {"CompressedTensorsWNA16": "MacheteLinearKernel"},
                       "moe_family": "WNA16", "moe_backend": "MARLIN",
                       "moe_method": "CompressedTensorsWNA16MarlinMoEMethod"},
    "sm90-a3b-fp8": {"quantization": "fp8", "moe_family": "FP8", "moe_backend": "TRITON",
                     "linear_kernels": {"Fp8PerTensorOnlineLinearMethod": "CutlassFP8ScaledMMLinearKernel"}},
    # sm90 only: CUTLASS W4A8 (int4 weights, fp8 activations) for linear layers and experts
    "sm90-a3b-w4a8": {"linear_kernels": {"CompressedTensorsW4A8Fp8": "CutlassW4A8LinearKernel"},
                      "moe_family": "W4A8", "moe_backend": "VLLM_CUTLASS",
                      "moe_method": "CompressedTensorsW4A8Fp8MoEMethod"},
    # no FP4 tensor cores on Hopper: weight-only FP4 through Marlin, and the log says so
    "sm90-a3b-nvfp4": {"linear_kernels": {"NVFP4 GEMM": "marlin"}, "moe_family": "NVFP4", "moe_backend": "MARLIN",
                       "fallbacks": ["fp4-marlin-weight-only"]},
    "sm90-gpt-oss-120b-mxfp4": {"quantization": "gpt_oss_mxfp4", "moe_family": "MXFP4", "moe_backend": "TRITON"},
    "sm90-qwen3-8b": {"model_runner": "V2", "linear_kernels": {}, "moe_backend": None},
}
# weight memory (GiB) and KV-cache tokens the same engines logged: real at full size even with dummy weights
MEMORY = {"sm90-a3b-w4a16": (15.7, 10912), "sm90-a3b-fp8": (29.11, 10912), "sm90-a3b-w4a8": (17.07, 10912),
          "sm90-a3b-nvfp4": (16.95, 10912), "sm90-gpt-oss-120b-mxfp4": (61.43, 14531),
          "sm90-qwen3-8b": (15.27, 7280)}


def test_every_h200_log_has_expectations() -> None:
    captured = {p.name.removeprefix("vllm-0.26.0-h200-").removesuffix(".log")
                for p in CUDA.glob("vllm-0.26.0-h200-*.log")}
    assert captured == set(EXPECTED) == set(MEMORY)


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_real_h200_log(config: str) -> None:
    text = (CUDA / f"vllm-0.26.0-h200-{config}.log").read_text()
    record = parse_log_file(CUDA / f"vllm-0.26.0-h200-{config}.log").to_dict()
    assert "--load-format dummy" in text.splitlines()[0]  # a shape model
    assert record["vllm_version"] == "0.26.0" and record["platform"] == "cuda"
    assert record["attention_backend"] == "FLASH_ATTN" and record["flash_attn_version"] == 3
    assert record["cudagraph_mode"] == "FULL_AND_PIECEWISE" and record["enforce_eager"] is False
    for key, value in EXPECTED[config].items():
        assert record[key] == value, f"{config}: {key} = {record[key]!r}, expected {value!r}"
    figs = {f.name: f.median for f in engine_figures(text, None)}
    assert (figs["model_memory_gib"], figs["kv_cache_tokens"]) == MEMORY[config]
    # the committed kernel snapshot and baseline were recorded from this very engine
    base = json.loads((REPO / "baselines" / "sm90-h200" / f"{config}.json").read_text())
    assert base["kernels"] == kernel_snapshot_dict(text)
    assert base["figures"]["model_memory_gib"]["median"] == MEMORY[config][0]
