"""Launchers through the plugin: a container runtime (a scripted `docker` that runs the stand-in engine),
attaching to a server someone else started, and GPU leases shared by pytest-xdist workers."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from plugin_support import TESTS, assert_no_engine_left

from quantgate.engine.process import free_port

ABSOLUTE = """
[gate]
mode = "absolute"
default_tolerance = 0.3

[workload]
outputs = {{ short = 8 }}
contexts = [0]
repeats = 2
warmup = 1

[defaults]
model = "{model}"
hardware = ["{hw}"]

{configs}
"""


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def gate(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """pytester with the stand-in engine and an absolute-gate matrix whose configs are given per test."""
    model = pytester.path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    pytester.makepyfile(test_gate="from quantgate.suite import *  # noqa\n")
    pytester.makeini("[pytest]\nquantgate_matrix = matrix.toml\naddopts = --strict-markers -p no:cacheprovider\n")
    monkeypatch.setenv("QUANTGATE_ENGINE_MODULE", "fake_vllm")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_PIDFILE", str(pytester.path / "pids.txt"))
    monkeypatch.setenv("FAKE_LAUNCHFILE", str(pytester.path / "launches.jsonl"))

    def write(configs: str, hw: str) -> None:
        monkeypatch.setenv("QUANTGATE_HARDWARE", hw)
        (pytester.path / "matrix.toml").write_text(ABSOLUTE.format(model=model, hw=hw, configs=configs))

    return write


def _launches(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "launches.jsonl").read_text().splitlines()]


# --- container ---------------------------------------------------------------------------------------------
FAKE_DOCKER = """
import json, os, sys
calls = os.environ["FAKE_DOCKER_CALLS"]
argv = sys.argv[1:]
with open(calls, "a") as fh:
    fh.write(json.dumps({"argv": argv, "key_in_env": bool(os.environ.get("VLLM_API_KEY"))}) + "\\n")
if argv[0] == "rm":
    sys.exit(0)
# run ... -p 127.0.0.1:PORT:8000 ... IMAGE vllm serve MODEL ARGS: serve the stand-in on the published port
port = argv[argv.index("-p") + 1].split(":")[1]
serve = argv[argv.index("vllm") + 1:]
serve[serve.index("--port") + 1] = port
serve[serve.index("--host") + 1] = "127.0.0.1"
env = dict(os.environ)
for i, a in enumerate(argv):
    if a == "-e" and "=" in argv[i + 1]:
        k, v = argv[i + 1].split("=", 1)
        env[k] = v
os.execvpe(sys.executable, [sys.executable, "-m", "fake_vllm", *serve], env)
"""


def _use_fake_docker(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container launcher with a scripted `docker` first on PATH, recording its calls."""
    bin_dir = pytester.path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "docker", FAKE_DOCKER)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_CALLS", str(pytester.path / "docker_calls.jsonl"))
    monkeypatch.setenv("QUANTGATE_LAUNCHER", "container")
    monkeypatch.setenv("QUANTGATE_CONTAINER_RUNTIME", "docker")
    monkeypatch.setenv("QUANTGATE_CONTAINER_IMAGE", "vllm/vllm-openai:v0.26.0")


def test_container_launcher_runs_each_config_in_a_container(gate, pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    gate('[[config]]\nid = "c1"\nenv = { VLLM_USE_FLASHINFER_MOE_FP4 = "0" }\n\n[[config]]\nid = "c2"\n',
         "cpu-test")
    _use_fake_docker(pytester, monkeypatch)
    result = pytester.runpytest_subprocess("-m", "cpu", "--update-baselines", timeout=240)
    result.assert_outcomes(passed=4)  # per config: the kernel snapshot and decode_tps
    calls = [json.loads(line) for line in (pytester.path / "docker_calls.jsonl").read_text().splitlines()]
    runs = [c["argv"] for c in calls if c["argv"][0] == "run"]
    removes = [c["argv"] for c in calls if c["argv"][0] == "rm"]
    assert len(runs) == 2 and all(c["key_in_env"] for c in calls if c["argv"][0] == "run")
    for argv in runs:
        published = argv[argv.index("-p") + 1]
        assert published.startswith("127.0.0.1:") and published.endswith(":8000")  # never all interfaces
        assert argv[argv.index("--gpus") + 1] == "all" and "--privileged" not in argv
        assert "-e" in argv and "VLLM_API_KEY" in argv  # passed by name: the value stays off the command line
        assert not any(len(a) == 32 and all(ch in "0123456789abcdef" for ch in a) for a in argv)
        name = argv[argv.index("--name") + 1]
        assert ["rm", "-f", name] in removes  # removed on stop, even if --rm did not run
    c1 = next(a for a in runs if "--served-model-name" in a and a[a.index("--served-model-name") + 1] == "c1")
    assert "VLLM_USE_FLASHINFER_MOE_FP4=0" in c1
    assert_no_engine_left(pytester.path)


@pytest.mark.fault("security", "QUANTGATE_CONTAINER_ARGS=--privileged under pytest",
                   "exit 4 naming the flag; with QUANTGATE_CONTAINER_ALLOW_UNSAFE=1 it runs and report.md warns")
def test_unsafe_container_args_refused_or_reported(gate, pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gate('[[config]]\nid = "c1"\n', "cpu-test")
    _use_fake_docker(pytester, monkeypatch)
    monkeypatch.setenv("QUANTGATE_CONTAINER_ARGS", "--privileged")
    refused = pytester.runpytest_subprocess("-m", "cpu", "--update-baselines", timeout=240)
    assert refused.ret == 4
    refused.stderr.fnmatch_lines(["ERROR: quantgate: QUANTGATE_CONTAINER_ARGS refused: --privileged*"])
    assert not (pytester.path / "docker_calls.jsonl").exists()  # nothing was started
    monkeypatch.setenv("QUANTGATE_CONTAINER_ALLOW_UNSAFE", "1")
    allowed = pytester.runpytest_subprocess("-m", "cpu", "--update-baselines", timeout=240)
    allowed.assert_outcomes(passed=2)
    report = next((pytester.path / "results").glob("*/report.md")).read_text()
    assert "> **Warning:** QUANTGATE_CONTAINER_ALLOW_UNSAFE=1: the engine container ran with --privileged" in report
    assert_no_engine_left(pytester.path)


# --- attach ------------------------------------------------------------------------------------------------
@pytest.fixture
def server(pytester: pytest.Pytester):
    """A stand-in engine someone else started (not by quantgate), with its own key and log."""
    port, key = free_port(), secrets.token_hex(16)
    log = pytester.path / "their-server.log"
    env = {**os.environ, "VLLM_API_KEY": key,
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "fake_vllm", "serve", "/models/theirs", "--host", "127.0.0.1",
                                 "--port", str(port), "--served-model-name", "theirs"], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, key, log, proc
    proc.terminate()
    proc.wait(10)


def test_attach_measures_a_running_server_and_leaves_it_running(gate, server, pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, key, log, proc = server
    gate('[[config]]\nid = "theirs"\n\n[[config]]\nid = "other"\n', "cpu-test")
    monkeypatch.setenv("QUANTGATE_LAUNCHER", "attach")
    monkeypatch.setenv("QUANTGATE_ATTACH_URL", url)

    # without its key the server refuses, and the message says which setting to give
    result = pytester.runpytest_subprocess("-m", "cpu", "-k", "theirs", "--update-baselines", timeout=120)
    result.stdout.fnmatch_lines(["*attached server http://127.0.0.1:* answered /health 200, /v1/models 401 "
                                 "(set QUANTGATE_ATTACH_API_KEY)*"])
    monkeypatch.setenv("QUANTGATE_ATTACH_API_KEY", key)

    # no log named: figures are measured and recorded, the kernel test is skipped with the reason
    result = pytester.runpytest_subprocess("-m", "cpu", "-k", "theirs", "--update-baselines", "-rs", timeout=120)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*attached to a running server without a log: set QUANTGATE_ATTACH_LOG*"])
    baseline = json.loads((pytester.path / "baselines" / "cpu-test" / "theirs.json").read_text())
    assert baseline["figures"]["decode_tps[ctx=0,out=short]"]["n"] == 2

    # with its log: the kernel record is read from it and snapshotted like a local engine's
    monkeypatch.setenv("QUANTGATE_ATTACH_LOG", str(log))
    result = pytester.runpytest_subprocess("-m", "cpu", "-k", "theirs", "--update-baselines", timeout=120)
    result.assert_outcomes(passed=2)
    snap = next((pytester.path / "baselines" / "cpu-test" / "kernels").rglob("*theirs*.json"))
    assert json.loads(snap.read_text())["platform"] == "cpu" and json.loads(snap.read_text())["dtype"] == "bfloat16"
    result = pytester.runpytest_subprocess("-m", "cpu", "-k", "theirs", timeout=120)
    result.assert_outcomes(passed=2)

    # one server is one config: a second config in the same run is refused, not filed under a wrong name
    result = pytester.runpytest_subprocess("-m", "cpu", timeout=120)
    result.stdout.fnmatch_lines(["*config 'other': QUANTGATE_LAUNCHER=attach measures one server, already used "
                                 "as config 'theirs'*"])
    assert proc.poll() is None, "quantgate stopped a server it did not start"
    assert not (pytester.path / "launches.jsonl").exists() or all(
        e["config"] == "theirs" for e in _launches(pytester.path))  # nothing else was started


# --- several GPUs: pytest-xdist workers lease GPUs from one pool ----------------------------------------------
FAKE_NVIDIA_SMI = """
import sys
query = " ".join(sys.argv[1:])
if "--query-gpu=index,uuid" in query:
    print("0, GPU-aaaa\\n1, GPU-bbbb")
elif "--query-gpu=index" in query:
    print("0\\n1")
elif "--query-gpu=" in query:
    print("NVIDIA H200, 9.0, 580.159.04\\nNVIDIA H200, 9.0, 580.159.04")
# --query-compute-apps: no other process holds GPU memory
"""


def _lifetimes(path: Path) -> dict[str, tuple[float, float, set[str]]]:
    events = _launches(path)
    out = {}
    for start in (e for e in events if e["event"] == "start"):
        stop = next(e for e in events if e["event"] == "stop" and e["pid"] == start["pid"])
        out[start["config"]] = (start["t"], stop["t"], set(start["gpus"].split(",")))
    assert len(out) == len([e for e in events if e["event"] == "start"]), "a config's engine started twice"
    return out


def test_xdist_workers_lease_gpus_and_share_one_report(gate, pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    gate('[[config]]\nid = "a"\n\n[[config]]\nid = "b"\n\n'
         '[[config]]\nid = "tp2"\nserve_args = ["--tensor-parallel-size", "2"]\n', "sm90")
    bin_dir = pytester.path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("QUANTGATE_GPU_LOCK_DIR", str(pytester.path / "gpu-locks"))
    monkeypatch.setenv("FAKE_TOKENS_PER_S", "60")  # engines live long enough to overlap

    result = pytester.runpytest_subprocess("-m", "sm90", "-n", "2", "--update-baselines", timeout=240)
    result.assert_outcomes(passed=6)
    life = _lifetimes(pytester.path)
    assert set(life) == {"a", "b", "tp2"}
    assert life["tp2"][2] == {"0", "1"} and len(life["a"][2]) == len(life["b"][2]) == 1
    overlapping = [(x, y) for x in life for y in life if x < y
                   and life[x][0] < life[y][1] and life[y][0] < life[x][1]]
    assert overlapping, f"no two engines ran at once: {life}"
    for x, y in overlapping:
        assert not life[x][2] & life[y][2], f"{x} and {y} ran on the same GPU at the same time"
    # one run folder, one report written by the controller with every worker's configs and verdicts
    runs = list((pytester.path / "results").iterdir())
    assert len(runs) == 1
    assert not (runs[0] / "workers").exists()  # verdicts came over xdist's channels, not a side folder of files
    report = (runs[0] / "report.md").read_text()
    assert all(f"## {cid} —" in report for cid in ("a", "b", "tp2"))
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert sorted(v["config_id"] for v in summary["verdicts"]) == ["a", "b", "tp2"]
    result.stdout.fnmatch_lines(["*UPDATED  tp2*decode_tps*", "*baseline written:*tp2.json*"])

    (pytester.path / "launches.jsonl").unlink()
    result = pytester.runpytest_subprocess("-m", "sm90", "-n", "2", timeout=240)
    result.assert_outcomes(passed=6)  # baselines and kernel snapshots written by two workers all match
    # nvidia-smi names an H200: the baseline folder is the GPU model's (quantgate.hardware.baseline_key_for)
    assert len(list((pytester.path / "baselines" / "sm90-h200" / "kernels").rglob("*.json"))) == 3


def test_prestart_and_xdist_exclude_each_other(gate, pytester: pytest.Pytester) -> None:
    gate('[[config]]\nid = "a"\n', "sm90")
    result = pytester.runpytest_subprocess("-n", "2", "--qg-prestart", timeout=60)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--qg-prestart starts every engine in one process on shared GPUs*"])
