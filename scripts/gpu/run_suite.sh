#!/usr/bin/env bash
# Device side of the sm90 lane (the `run` tool's machine, after ../shared/gpu's kit staged vLLM there):
#   bash scripts/gpu/run_suite.sh NAME [pytest args...]
# QG_MATRIX (default fixtures/matrix/sm90.toml); QG_PRESTART=0 for -n N runs (engines lease their own GPUs).
# carry: .stage/kit .whl (syrupy wheel) .gpu-models (cache/: quantized recipes built on the CPU host;
# fp4/: scripts/gpu/build_fp4.py output). Runs the regression suite on fixtures/matrix/sm90.toml with all
# engines prestarted, stops it with SIGINT before QG_BUDGET_S (pytest still writes its report), and
# leaves in $OUT: NAME-pytest.log, NAME-junit.xml, NAME-results.tgz (results/ + baselines/sm90-*), NAME-env.txt
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash .stage/kit/install.sh >"$OUT/install.log" 2>&1 || { tail -5 "$OUT/install.log"; exit 3; }
. .stage/kit/env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/qgdeps .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/qgdeps:$PYTHONPATH PYTHONUNBUFFERED=1
mkdir -p /tmp/qgmodels && cp -rn .gpu-models/cache/. /tmp/qgmodels/
# many engines compile at once under --qg-prestart: compile in-process instead of a 16-worker pool per engine
# (same generated kernels, far less memory)
export TORCHINDUCTOR_COMPILE_THREADS=1
export QUANTGATE_MODEL_CACHE=/tmp/qgmodels QUANTGATE_GPU_MODELS=$PWD/.gpu-models/fp4
name=$1; shift
{ nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.used,memory.total --format=csv
  python3 -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'; } \
  2>&1 | tee "$OUT/$name-env.txt"
# quantgate travels as source (PYTHONPATH=src): load its pytest plugin by name unless an install registered it
plug="-p quantgate.pytest_plugin"
python3 -c 'import importlib.metadata as m,sys; sys.exit(0 if any(e.value=="quantgate.pytest_plugin" for e in m.entry_points(group="pytest11")) else 1)' && plug=""
echo "setup done after $(( $(date +%s) - T0 )) s"
timeout -s INT -k 40 "${QG_BUDGET_S:-520}" python3 -m pytest $plug tests/regression -m sm90 \
  --qg-matrix "${QG_MATRIX:-fixtures/matrix/sm90.toml}" $([ "${QG_PRESTART:-1}" = 1 ] && echo --qg-prestart) \
  --qg-start-timeout 420 \
  --junitxml="$OUT/$name-junit.xml" "$@" 2>&1 | tee "$OUT/$name-pytest.log"
rc=${PIPESTATUS[0]}
tar czf "$OUT/$name-results.tgz" results baselines/sm90-* /tmp/qgmodels/.logs 2>/dev/null
echo "QG_DEVICE_SECONDS $name $(( $(date +%s) - T0 )) rc=$rc"
