"""Worker run by quantgate.models.recipes with the quantizer's interpreter (.venv-quant: torch + llmcompressor).

Usage: python _quantize_model.py JOB_JSON
  {"base": DIR, "out": DIR, "scheme": "W4A16" | "W8A8" | "FP8_DYNAMIC", "ignore": [...]}

quantgate is not installed in that environment, so this file imports nothing from it. All three schemes are
data-free (static weight scales, dynamic or no activation quantization), so no calibration set is needed.
The last stdout line is `QUANTGATE_RESULT {json}`.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    t0 = time.perf_counter()
    try:
        import compressed_tensors
        import llmcompressor
        import torch
        import transformers
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        print(f"quantgate quantizer: {exc}; {sys.executable} needs llmcompressor (run scripts/setup-cpu.sh "
              f"or point QUANTGATE_QUANT_PYTHON at a python that has it)", file=sys.stderr)
        return 3

    model = AutoModelForCausalLM.from_pretrained(job["base"], dtype=torch.bfloat16)
    recipe = QuantizationModifier(targets="Linear", scheme=job["scheme"], ignore=job["ignore"])
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(job["out"], save_compressed=True)
    result = {
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
        },
    }
    print("QUANTGATE_RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
