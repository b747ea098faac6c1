"""Fault cases that need no engine process: files, ports, GPU memory, memory growth."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai import FakeServer  # noqa: E402
from quantgate import hardware as hardware_mod  # noqa: E402
from quantgate.config.matrix import EngineConfig, load_matrix  # noqa: E402
from quantgate.engine import process as engine_mod  # noqa: E402
from quantgate.gate.baselines import BaselineStore, atomic_write  # noqa: E402
from quantgate.models.recipes import ModelError  # noqa: E402
from quantgate.session import Run, Settings  # noqa: E402
from quantgate.stats import Figure  # noqa: E402
from quantgate.workload.grid import Client  # noqa: E402


def _writer(path: str, size: int) -> None:
    n = 0
    while True:
        n += 1
        atomic_write(Path(path), json.dumps({"n": n, "pad": "x" * size}))


@pytest.mark.fault("baselines", "refresh killed with SIGKILL mid-write", "the file is the old or the new version, "
                   "never half; no temp file is taken for a baseline")
def test_sigkill_mid_write_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "cpu-x" / "a.json"
    atomic_write(path, json.dumps({"n": 0}))
    for _ in range(5):
        proc = multiprocessing.Process(target=_writer, args=(str(path), 2_000_000))
        proc.start()
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert "n" in json.loads(path.read_text())  # parses: old or new, whole
    assert BaselineStore(tmp_path).path("cpu-x", "a") == path


def _update(root: str, name: str) -> None:
    fig = Figure(name, "tok/s", True, (1.0, 2.0, 3.0))
    for _ in range(20):
        BaselineStore(Path(root)).update("cpu-x", "cfg", [fig], None, {}, name)


@pytest.mark.fault("baselines", "two xdist workers refresh the same config at once", "a file lock serializes "
                   "read-merge-write: both workers' figures end up in the file")
def test_concurrent_refresh_keeps_both_workers_figures(tmp_path: Path) -> None:
    procs = [multiprocessing.Process(target=_update, args=(str(tmp_path), f"fig{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    base = BaselineStore(tmp_path).load("cpu-x", "cfg")
    assert base is not None and set(base.figures) == {"fig0", "fig1"}


@pytest.mark.fault("baselines", "schema from another quantgate version / baseline of another hardware id",
                   "one line naming the file, the found and the expected schema or hardware")
def test_foreign_baselines_are_refused(tmp_path: Path) -> None:
    from quantgate.gate.baselines import BaselineError

    store = BaselineStore(tmp_path)
    store.update("cpu-x", "a", [Figure("f", "u", True, (1.0,))], None, {}, "r")
    path = store.path("cpu-x", "a")
    body = json.loads(path.read_text())
    path.write_text(json.dumps({**body, "schema": 0}))
    with pytest.raises(BaselineError, match=r"schema 0, this quantgate reads schema 1"):
        store.load("cpu-x", "a")
    (tmp_path / "sm90").mkdir()
    (tmp_path / "sm90" / "a.json").write_text(json.dumps(body))
    with pytest.raises(BaselineError, match=r"sm90/a.json: holds config 'a' for hardware 'cpu-x'"):
        store.load("sm90", "a")


def _run(tmp_path: Path, toml: str) -> Run:
    (tmp_path / "m.toml").write_text(toml)
    matrix = load_matrix(tmp_path / "m.toml")
    return Run((matrix,), hardware_mod.Hardware(id="cpu-test", name="test"),
               Settings(results_dir=tmp_path / "r", baselines_dir=tmp_path / "b"), log=lambda s: None)


@pytest.mark.fault("model", "model path missing / not a model folder / recipe invalid",
                   "every test of the config fails with one line naming the matrix, config and path or key")
def test_model_errors_name_the_config(tmp_path: Path) -> None:
    run = _run(tmp_path, f'[[config]]\nid = "gone"\nmodel = "{tmp_path}/nope"\n'
                         f'[[config]]\nid = "empty"\nmodel = "{tmp_path}"\n'
                         '[[config]]\nid = "bad"\nmodel = { recipe = "qwen3-dense", layers = 3 }\n')
    with pytest.raises(ModelError, match=r"config 'gone': model path '.*nope' does not exist"):
        run.engine("gone")
    with pytest.raises(ModelError, match=r"config 'empty': model path .* has no config.json \(not a model folder\)"):
        run.engine("empty")
    with pytest.raises(ModelError, match=r"config 'bad'.*layers"):
        run.engine("bad")
    with pytest.raises(ModelError):  # remembered: the config is not retried for every test
        run.engine("gone")


@pytest.mark.fault("engine", "port taken between choosing it and vLLM binding it",
                   "the start is retried once on another free port; the first log is kept as *.port-taken.log")
def test_port_taken_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    ports = iter([taken])
    real_free = engine_mod.free_port
    monkeypatch.setattr(engine_mod, "free_port", lambda: next(ports, None) or real_free())
    monkeypatch.setenv("QUANTGATE_ENGINE_MODULE", "fake_vllm")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    run = _run(tmp_path, f'[[config]]\nid = "p"\nmodel = "{model}"\n')
    try:
        eng = run.engine("p")
        assert eng.port != taken and eng.alive()
        assert (tmp_path / "r" / run.run_id / "p" / "engine.port-taken.log").exists()
    finally:
        run.close()
        blocker.close()


@pytest.mark.fault("engine", "GPU memory still held by a previous run (GPU only)",
                   "refused before start, naming the pid and MiB held")
def test_gpu_memory_held_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    run = _run(tmp_path, f'[[config]]\nid = "g"\nmodel = "{model}"\nhardware = ["sm90"]\n')
    run.hardware = hardware_mod.Hardware(id="sm90", name="H100")
    monkeypatch.setattr(hardware_mod, "gpu_memory_holders", lambda: [(424242, 70000, "GPU-x")])
    with pytest.raises(engine_mod.EngineStartError, match=r"GPU memory is still held by pid 424242 \(70000 MiB\)"):
        run.engine("g")


@pytest.mark.fault("load", "1000 requests through the client", "the harness's memory stays flat "
                   "(under 5 MiB growth after the first 100)")
def test_thousand_requests_keep_memory_flat() -> None:
    with FakeServer(tokens_per_s=1e6) as srv, Client(srv.url, "m") as client:
        for _ in range(100):
            client.complete([1, 2, 3], 4)
        tracemalloc.start()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(900):
            client.complete([1, 2, 3], 4)
        end, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert end - start < 5 * 2**20, f"grew by {(end - start) / 2**20:.1f} MiB"


@pytest.mark.fault("security", "engine bind address", "always 127.0.0.1, never 0.0.0.0")
def test_serve_command_binds_loopback_only(tmp_path: Path) -> None:
    cfg = EngineConfig(id="x", model="/m", quantization="bf16", hardware=("cpu",), serve_args=("--foo",))
    cmd = engine_mod.serve_command(cfg, engine_mod.ResolvedModels("/m"), 1234)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "0.0.0.0" not in cmd
    env = engine_mod.engine_env(cfg, "k" * 32)
    assert env["VLLM_API_KEY"] == "k" * 32 and "k" * 32 not in " ".join(cmd)


def test_console_quantgate_kernels_bad_input_exit_code(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "quantgate.cli", "kernels", str(tmp_path / "x.log")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no such file" in out.stderr


@pytest.mark.fault("engine", "engine core dies during start but the API server keeps waiting (vLLM 0.26, TP=2)",
                   "failed at once with the log tail, not after the start timeout")
def test_engine_core_death_during_start_fails_fast(tmp_path: Path) -> None:
    """Replays the real log of a tensor-parallel start on the lent H200 pair, where the engine core died
    (CUBLAS_STATUS_INTERNAL_ERROR) and vLLM's API server polled for it until killed 6 minutes later."""
    real = Path(__file__).resolve().parents[2] / "fixtures/logs/cuda/runs/h200x2-mg-bf16-tp2-engine-core-died.log"
    log = tmp_path / "engine.log"
    cfg = EngineConfig(id="tp2", model="m", quantization="bf16", hardware=("sm90",))
    # a stand-in API server: it writes the real log, then waits forever, as vLLM's did
    proc = subprocess.Popen([sys.executable, "-c", f"import shutil,time; shutil.copy({str(real)!r}, {str(log)!r}); "
                             "time.sleep(600)"], start_new_session=True)
    eng = engine_mod.Engine(config=cfg, port=engine_mod.free_port(), api_key="k", log_path=log, process=proc,
                            started_at=time.monotonic())
    started = time.monotonic()
    with pytest.raises(engine_mod.EngineStartError, match=r"failed to start \(EngineCore failed to start\) while "
                                                          r"its API server kept waiting \(killed\)"):
        engine_mod.wait_healthy(eng, timeout_s=300, poll_s=0.2)
    assert time.monotonic() - started < 30
    assert proc.poll() is not None  # stopped, not left polling


def test_matrix_env_cannot_pin_the_api_key() -> None:
    from dataclasses import replace as _replace

    cfg = EngineConfig(id="x", model="/m", quantization="bf16", hardware=("cpu",))
    env = engine_mod.engine_env(_replace(cfg, env={"VLLM_API_KEY": "pinned", "OTHER": "1"}), "k" * 32)
    assert env["VLLM_API_KEY"] == "k" * 32 and env["OTHER"] == "1"
