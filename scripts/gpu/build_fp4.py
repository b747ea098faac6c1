"""Build small FP4 checkpoints (NVFP4A16, MXFP4A16) from quantgate's synthesized bf16 models.

quantgate's recipes cover bf16, w4a16, w8a8 and fp8-dynamic; the FP4 schemes are made here, with
llmcompressor's data-free presets, for the sm90 matrix (vLLM falls back to weight-only FP4 through Marlin
on Hopper, and the kernel snapshot must show it). Run with the quantizer's interpreter:

    .venv-quant/bin/python scripts/gpu/build_fp4.py OUT_DIR BASE_DENSE BASE_MOE

OUT_DIR gets qwen3-dense-nvfp4a16/, qwen3-dense-mxfp4a16/, qwen3-moe-nvfp4a16/, qwen3-moe-mxfp4a16/
(4-6 MiB each). The matrix names them as ${QUANTGATE_GPU_MODELS}/<name>.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")
IGNORE = ["lm_head", "re:.*mlp.gate$"]  # keep the LM head and the MoE router in bf16


def main(argv: list[str]) -> int:
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    out = Path(argv[1])
    bases = {"qwen3-dense": Path(argv[2]), "qwen3-moe": Path(argv[3])}
    for name, base in bases.items():
        for scheme in ("NVFP4A16", "MXFP4A16"):
            dest = out / f"{name}-{scheme.lower()}"
            if (dest / "config.json").exists():
                print(f"cached {dest}")
                continue
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
            oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=IGNORE))
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, save_compressed=True)
            for f in TOKENIZER_FILES:
                shutil.copyfile(base / f, tmp / f)
            tmp.rename(dest)
            print(f"built {dest} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
