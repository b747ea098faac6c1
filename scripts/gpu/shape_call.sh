#!/usr/bin/env bash
# Device side of one `run` call of the full-shape sm90 lane (docs/gpu.md has the plan and what each call cost).
# Run from the root of the tree `run` sends, with .stage/kit (../shared/gpu's kit, already staged), .gpu-tree
# (this repository's working tree, rsynced there) and .whl (syrupy) carried:
#
#   bash .gpu-tree/scripts/gpu/shape_call.sh NAME BUDGET_S STEP [STEP...]
#
# STEP is one of
#   update:<copies.py args>   a wave: the matrix copies.py makes from fixtures/matrix/sm90.toml, every engine
#                             prestarted at once, measured one at a time, baselines (and kernel snapshots) recorded
#   check:<copies.py args>    a wave judged against the stored baselines (copies against their original's)
#   calibrate[:<args>]        noise.json from every engine measured so far on this machine (calibrate_runs.py)
# e.g. "update:--keep sm90-a3b-w4a16,sm90-a3b-fp8 sm90-a3b-w4a16:aa1"
#
# Baselines and results live in /tmp/qg on the device, so later calls on the same (warm) machine see what
# earlier ones recorded; each call leaves in $OUT NAME-qg.tgz (results/, baselines/, calls/NAME/: wN-pytest.log,
# wN-junit.xml, gpu.csv with GPU memory every 5 s, env.txt, install.log) and NAME-env.txt. Every wave is stopped with
# SIGINT before BUDGET_S (pytest still writes its report), so the call ends inside `run`'s limit.
set -u
T0=$(date +%s)
name=$1 budget=$2; shift 2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOGS=/tmp/qg/calls/$name; mkdir -p "$LOGS"  # $OUT brings back 8 files at most: logs travel inside the tgz
bash .stage/kit/install.sh >"$LOGS/install.log" 2>&1 || { tail -5 "$LOGS/install.log"; exit 3; }
. .stage/kit/env.sh
[ -d /tmp/qgdeps/syrupy ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/qgdeps .whl/*.whl
# the slowdown plugin's entry point: quantgate travels as source, so a minimal dist-info declares it
dist=/tmp/qgdist/quantgate_gpu_plugins-0.0.0.dist-info
mkdir -p $dist
printf 'Metadata-Version: 2.1\nName: quantgate-gpu-plugins\nVersion: 0.0.0\n' >$dist/METADATA
printf '[vllm.general_plugins]\nquantgate_slowdown = quantgate.engine.slowdown:register\n' >$dist/entry_points.txt
cd .gpu-tree
export PYTHONPATH=$PWD/src:/tmp/qgdist:/tmp/qgdeps:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# many engines compile at once under --qg-prestart: compile in-process, not a 16-worker pool per engine
export TORCHINDUCTOR_COMPILE_THREADS=1 QUANTGATE_MODEL_CACHE=/tmp/qg/models
mkdir -p /tmp/qg/results
[ -d /tmp/qg/baselines ] || cp -r baselines /tmp/qg/baselines
{ date -u; uptime; nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.used,memory.total --format=csv
  python3 -c 'import quantgate.hardware as h; d=h.detect(); print(d.baseline_key, d.versions)'
  ls ~/.cache 2>/dev/null; } 2>&1 | tee "$LOGS/env.txt"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 5 >"$LOGS/gpu.csv" 2>&1 &
smi=$!
# quantgate travels as source: load its pytest plugin by name unless an install registered it
plug="-p quantgate.pytest_plugin"
python3 -c 'import importlib.metadata as m,sys; sys.exit(0 if any(e.value=="quantgate.pytest_plugin" for e in m.entry_points(group="pytest11")) else 1)' && plug=""
key=$(python3 -c 'import quantgate.hardware as h; print(h.detect().baseline_key)')
echo "setup done after $(( $(date +%s) - T0 )) s"
i=0
for step in "$@"; do
  i=$((i + 1))
  left=$(( budget - ($(date +%s) - T0) - 30 ))
  if [ "${step%%:*}" = calibrate ]; then
    cargs=""; [ "$step" != calibrate ] && cargs=${step#calibrate:}
    # shellcheck disable=SC2086
    python3 scripts/gpu/calibrate_runs.py /tmp/qg/baselines "$key" /tmp/qg/results $cargs 2>&1 | tee "$LOGS/w$i-calibrate.log"
    continue
  fi
  mode=${step%%:*} spec=${step#*:}
  # shellcheck disable=SC2086
  python3 scripts/gpu/copies.py fixtures/matrix/sm90.toml /tmp/qg/$name-w$i.toml $spec || exit 2
  upd=""; [ "$mode" = update ] && upd=--update-baselines
  if [ $left -lt 120 ]; then echo "wave $i skipped: $left s left"; continue; fi
  echo "wave $i ($mode: $spec) with $left s left, at $(( $(date +%s) - T0 )) s"
  timeout -s INT -k 30 $left python3 -m pytest $plug tests/regression -m sm90 -p no:cacheprovider \
    --qg-matrix /tmp/qg/$name-w$i.toml --qg-prestart --qg-start-timeout "${QG_START_TIMEOUT:-420}" --qg-baselines /tmp/qg/baselines \
    --qg-results /tmp/qg/results $upd --junitxml="$LOGS/w$i-junit.xml" 2>&1 | tee "$LOGS/w$i-pytest.log" \
    | grep -E "quantgate:|PASSED|FAILED|ERROR|passed|failed|UPDATED|FAIL |PASS " | tail -60
  echo "wave $i rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"
  # syrupy's --snapshot-update deletes the snapshots of configs this wave did not collect (earlier waves'):
  # put them back, and drop the ones of copies (a copy is judged against its original's kernel record)
  kdir=/tmp/qg/baselines/$key/kernels
  if [ -d /tmp/qg/kernels-keep ]; then mkdir -p "$kdir"; cp -rn /tmp/qg/kernels-keep/. "$kdir/"; fi
  find "$kdir" -name '*--*' -delete 2>/dev/null
  [ -d "$kdir" ] && { rm -rf /tmp/qg/kernels-keep; cp -r "$kdir" /tmp/qg/kernels-keep; }
done
kill $smi 2>/dev/null
pgrep -af "vllm|quantgate.engine.vllm_entry" | cut -c1-160 | head -5  # engines left behind (none expected)
tar czf "$OUT/$name-qg.tgz" -C /tmp/qg results baselines calls 2>/dev/null
cp "$LOGS/env.txt" "$OUT/$name-env.txt"
ls -la "$OUT"
echo "QG_DEVICE_SECONDS $name $(( $(date +%s) - T0 ))"
