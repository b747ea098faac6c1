"""Shared set-up for plugin tests: a matrix, model folders and the scripted stand-in engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
HW = "cpu-test"

MATRIX = """
[gate]
mode = "relative"
reference = "ref"
default_tolerance = 0.2

[workload]
outputs = {{ short = 8, long = 24 }}
contexts = [0]
repeats = 3
warmup = 1

[defaults]
model = "{model}"

[[config]]
id = "ref"

[[config]]
id = "w4"
model = "{model}-w4a16"
quantization = "w4a16"

[[config]]
id = "gpu-only"
hardware = ["sm121"]

[[config]]
id = "broken"
env = {{ FAKE_ENGINE_MODE = "fail-start" }}
expected_failure = "no MoE backend on this CPU"
"""


@pytest.fixture
def qg(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    for suffix in ("", "-w4a16"):
        model = pytester.path / f"model{suffix}"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"vocab_size": 4096}))
    (pytester.path / "matrix.toml").write_text(MATRIX.format(model=pytester.path / "model"))
    pytester.makepyfile(test_gate="from quantgate.suite import *  # noqa\n")
    pytester.makeini(
        "[pytest]\nquantgate_matrix = matrix.toml\naddopts = --strict-markers -p no:cacheprovider\n")
    monkeypatch.setenv("QUANTGATE_ENGINE_MODULE", "fake_vllm")
    monkeypatch.setenv("QUANTGATE_HARDWARE", HW)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_PIDFILE", str(pytester.path / "pids.txt"))
    monkeypatch.setenv("FAKE_KEYFILE", str(pytester.path / "seen_keys.json"))
    # a kind with some baselines already: without any, the plugin stops before any engine starts (exit 6,
    # test_new_hardware.py); these tests are about configs of a known kind
    seed_baseline(pytester.path)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-m", "cpu", *args, timeout=240)

    return run


SEED_CONFIG = "recorded-elsewhere"


def seed_baseline(root: Path, hardware: str = HW) -> Path:
    """A baseline of a config not in the test's matrix: the hardware kind counts as having baselines."""
    from quantgate.gate.baselines import SCHEMA_VERSION

    path = root / "baselines" / hardware / f"{SEED_CONFIG}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": SCHEMA_VERSION, "config": SEED_CONFIG, "hardware": hardware,
                                "figures": {"decode_tps[ctx=0,out=long]": {"median": 100.0}}}))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def engine_pids_alive(path: Path) -> list[int]:
    pids = [int(p) for p in (path / "pids.txt").read_text().split()]
    return [p for p in pids if _alive(p)]


def assert_no_engine_left(path: Path) -> None:
    assert (path / "pids.txt").read_text().split(), "no engine was started"
    assert engine_pids_alive(path) == []


