#!/usr/bin/env bash
# Device side of benchmarks/ (the `run` tool's machine, after ../shared/gpu's kit staged vLLM there):
#   bash scripts/gpu/run_benchmarks.sh [headroom|fidelity|both]
# carry: .stage/kit (.gpu-models not needed: both scripts synthesize qwen3-dense bf16 on the device). headroom.py needs no GPU but a host with spare cores: the client gets core 0,
# QG_SHARDS token-source processes get cores 1..QG_SHARDS. fidelity.py starts one real vLLM engine on the GPU.
# Leaves in $OUT: bench-*.log and the scripts' raw JSON.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench"
bash .stage/kit/install.sh >"$OUT/install.log" 2>&1 || { tail -5 "$OUT/install.log"; exit 3; }
. .stage/kit/env.sh
export PYTHONPATH=$PWD/src:$PYTHONPATH PYTHONUNBUFFERED=1 QUANTGATE_MODEL_CACHE=/tmp/qgmodels
mkdir -p /tmp/qgmodels && { [ ! -d .gpu-models/cache ] || cp -rn .gpu-models/cache/. /tmp/qgmodels/; }
what=${1:-both}
{ nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread"; nvidia-smi --query-gpu=name --format=csv,noheader
  python3 -c 'import vllm, sys; print("vllm", vllm.__version__, "python", sys.version.split()[0])'
  python3 -c 'from quantgate.workload.streaming import event_loop; print("event loop", type(event_loop()).__module__)'
} 2>&1 | tee "$OUT/bench-env.txt"
echo "setup done after $(( $(date +%s) - T0 )) s"
if [ "$what" != fidelity ]; then
  timeout -k 20 "${QG_HEADROOM_S:-300}" python3 benchmarks/headroom.py --source-shards "${QG_SHARDS:-8}" \
    --streams ${QG_STREAMS:-32 64 128 192 256} --tokens "${QG_TOKENS:-200}" --out "$OUT/bench" \
    2>&1 | grep -v "^W1\|Warning" | tee "$OUT/bench-headroom.log"
fi
if [ "$what" != headroom ]; then
  timeout -k 20 "${QG_FIDELITY_S:-420}" python3 benchmarks/fidelity.py --concurrency "${QG_C:-16}" \
    --num-prompts "${QG_N:-64}" --input-len 128 --output-len 128 --rounds 2 --out "$OUT/bench" \
    2>&1 | tee "$OUT/bench-fidelity.log"
fi
echo "QG_DEVICE_SECONDS $(( $(date +%s) - T0 ))"
