"""The kernel parser on real CUDA engine logs: vLLM 0.26.0 on the lent H100 (sm90), captured by
`pytest -m sm90` (fixtures/logs/cuda/README.md says how). Each log must give the kernel record that vLLM
actually selected; the same records are the sm90 kernel snapshots in baselines/sm90-h100/kernels/."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantgate.kernels.parse import parse_log_file

CUDA = Path(__file__).resolve().parents[3] / "fixtures" / "logs" / "cuda"

# config -> fields the record must have (besides FLASH_ATTN + FA3, checked for every log)
EXPECTED: dict[str, dict[str, object]] = {
    "sm90-bf16": {"model_runner": "V2", "linear_kernels": {}, "moe_backend": None},
    "sm90-fp8-online": {"quantization": "fp8",
                        "linear_kernels": {"Fp8PerTensorOnlineLinearMethod": "CutlassFP8ScaledMMLinearKernel"}},
    "sm90-fp8-dynamic": {"quantization": "compressed-tensors",
                         "linear_kernels": {"CompressedTensorsW8A8Fp8": "CutlassFP8ScaledMMLinearKernel"}},
    # Hopper: Machete, not Marlin (SM12x picks Marlin)
    "sm90-w4a16": {"linear_kernels": {"CompressedTensorsWNA16": "MacheteLinearKernel"}},
    # no FP4 tensor cores on sm90: weight-only FP4 through Marlin, and the log says so
    "sm90-nvfp4a16": {"linear_kernels": {"NVFP4 GEMM": "marlin"}, "fallbacks": ["fp4-marlin-weight-only"]},
    "sm90-mxfp4a16": {"linear_kernels": {"MXFP4 GEMM": "MarlinMxFp4LinearKernel"}, "fallbacks": []},
    "sm90-ngram-nst3": {"spec_method": "ngram", "num_speculative_tokens": 3, "model_runner": "V1",
                        "fallbacks": ["model-runner-v2-unavailable"]},
    "sm90-draft-nst3": {"spec_method": "draft_model", "num_speculative_tokens": 3, "model_runner": "V1"},
    "sm90-eagle3-nst3": {"spec_method": "eagle3", "num_speculative_tokens": 3, "model_runner": "V2"},
    "sm90-moe-bf16": {"moe_family": "UNQUANTIZED", "moe_backend": "TRITON"},
    "sm90-moe-w4a16": {"moe_family": "WNA16", "moe_backend": "MARLIN",
                       "linear_kernels": {"CompressedTensorsWNA16": "MacheteLinearKernel"}},
    "sm90-moe-nvfp4a16": {"moe_family": "NVFP4", "moe_backend": "MARLIN", "fallbacks": ["fp4-marlin-weight-only"]},
    # a tiny Qwen3-Next (linear attention + MoE) with a random MTP layer
    "sm90-mtp-nst1": {"spec_method": "mtp", "num_speculative_tokens": 1, "moe_backend": "TRITON"},
    "sm90-mtp-nst2": {"spec_method": "mtp", "num_speculative_tokens": 2, "moe_backend": "TRITON"},
    # Qwen3-Coder-30B-A3B layer shape (128 experts, top-8)
    "sm90-moe-a3b-bf16": {"moe_family": "UNQUANTIZED", "moe_backend": "TRITON"},
    "sm90-moe-a3b-fp8-online": {"moe_family": "FP8", "moe_backend": "TRITON",
                                "linear_kernels": {"Fp8PerTensorOnlineLinearMethod": "CutlassFP8ScaledMMLinearKernel"}},
}


def _log(config: str) -> Path:
    return CUDA / f"vllm-0.26.0-h100-{config}.log"


def test_every_captured_log_has_expectations() -> None:
    captured = {p.name.removeprefix("vllm-0.26.0-h100-").removesuffix(".log")
                for p in CUDA.glob("vllm-0.26.0-h100-*.log")}
    assert captured == set(EXPECTED)


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_real_h100_log(config: str) -> None:
    record = parse_log_file(_log(config)).to_dict()
    assert record["vllm_version"] == "0.26.0"
    assert record["platform"] == "cuda"
    assert record["attention_backend"] == "FLASH_ATTN" and record["flash_attn_version"] == 3
    assert record["attention_candidates"][0] == "FLASH_ATTN"
    assert record["compile_mode"] == "VLLM_COMPILE" and record["cudagraph_mode"] == "FULL_AND_PIECEWISE"
    assert record["enforce_eager"] is False
    for key, value in EXPECTED[config].items():
        assert record[key] == value, f"{config}: {key} = {record[key]!r}, expected {value!r}"


def test_spec_decode_acceptance_in_sm90_baselines() -> None:
    """The engine logs carry no periodic SpecDecoding lines at this workload's length; acceptance comes from
    /metrics and is recorded in the baselines of the same runs."""
    import json

    root = Path(__file__).resolve().parents[3] / "baselines" / "sm90-h100"

    def acceptance(config: str) -> float:
        return json.loads((root / f"{config}.json").read_text())["figures"]["acceptance_length"]["median"]

    assert acceptance("sm90-ngram-nst3") > 3.0  # the prompts repeat: ngram drafts hit
    assert acceptance("sm90-draft-nst3") == pytest.approx(4.0)  # the target is its own draft
    assert acceptance("sm90-eagle3-nst3") == pytest.approx(1.0, abs=0.05)  # a random EAGLE3 head
    assert acceptance("sm90-mtp-nst2") == pytest.approx(1.0, abs=0.05)  # a random MTP layer
