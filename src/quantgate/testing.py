"""A workflow check of the gate itself, for quantgate's tests and a vLLM fork's CI.

`check_gate_workflow` drives five pytest sessions of a quantgate suite and checks that the gate does its job:
record baselines -> pass against them -> a slower engine fails -> ``--update-baselines`` accepts the new
speed -> the slower engine passes. pytest-regressions ships the same kind of helper for its fixtures.

The sessions run through a `Runner`: `pytest_runner` starts ``python -m pytest`` in a folder (a fork's CI
points it at its suite, with QUANTGATE_ENGINE_MODULE naming its engine or a scripted stand-in), and
`pytester_runner` adapts pytest's own ``pytester`` (quantgate's plugin tests run it on tests/fake_vllm.py).
"slower" is made with serve args, by default ``--enforce-eager`` (no torch.compile, no CUDA graphs), which
slows a real vLLM as it slows the scripted engine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .errors import QuantgateError

SLOWER = ("--qg-serve-arg=--enforce-eager",)


@dataclass(frozen=True)
class SessionResult:
    """One pytest session: its exit code, the counts of its summary line ({"passed": 4, "xfailed": 3}),
    and its output."""

    ret: int
    counts: Mapping[str, int]
    output: str

    def count(self, outcome: str) -> int:
        return int(self.counts.get(outcome, 0))


Runner = Callable[..., SessionResult]  # runner(*pytest_args) -> SessionResult


def _counts(output: str) -> dict[str, int]:
    try:
        return dict(pytest.RunResult.parse_summary_nouns(output.splitlines()))
    except ValueError:  # no summary line: pytest never got to run the tests
        return {}


def pytest_runner(*base_args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
                  timeout_s: float = 3600.0) -> Runner:
    """Sessions of ``python -m pytest *base_args *args`` in `cwd` (e.g. ``-m cpu tests/regression``)."""

    def run(*args: str) -> SessionResult:
        proc = subprocess.run([sys.executable, "-m", "pytest", *base_args, *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        output = proc.stdout + proc.stderr
        return SessionResult(proc.returncode, _counts(proc.stdout), output)

    return run


def pytester_runner(run: Callable[..., pytest.RunResult]) -> Runner:
    """Adapts a callable that runs pytester sessions (``lambda *a: pytester.runpytest_subprocess(*a)``)."""

    def adapted(*args: str) -> SessionResult:
        result = run(*args)
        output = result.stdout.str() + "\n" + result.stderr.str()
        return SessionResult(int(result.ret), result.parseoutcomes(), output)

    return adapted


class WorkflowError(QuantgateError, AssertionError):
    """A step of the gate workflow went the wrong way; the message names the step, what was expected, what
    pytest reported and the tail of its output."""


@dataclass
class Step:
    name: str
    args: tuple[str, ...]
    expect: str  # "pass": no failure and something passed; "fail": a figure regressed
    result: SessionResult | None = field(default=None, repr=False)


def _check(step: Step, result: SessionResult) -> None:
    step.result = result
    if step.expect == "pass":
        ok = result.ret == 0 and result.count("failed") == 0 and result.count("errors") == 0 \
            and result.count("passed") > 0
    else:  # a slower engine: pytest fails (exit 1) and at least one figure's verdict says it regressed
        ok = result.ret == 1 and result.count("failed") > 0 and "regressed" in result.output
    if not ok:
        tail = "\n".join(result.output.splitlines()[-25:])
        raise WorkflowError(
            f"gate workflow step {step.name!r} (pytest {' '.join(step.args) or '(no args)'}): expected it to "
            f"{'pass' if step.expect == 'pass' else 'fail with a regressed figure'}, got exit code "
            f"{result.ret} and {dict(result.counts) or 'no summary'}\n{tail}")


def check_gate_workflow(run: Runner, slower: Sequence[str] = SLOWER) -> list[Step]:
    """record -> pass -> slower -> fail -> --update-baselines -> pass; raises WorkflowError at the first step
    that goes the wrong way, else returns the steps with their results."""
    slow = tuple(slower)
    steps = [
        Step("record", ("--update-baselines",), "pass"),
        Step("pass", (), "pass"),
        Step("slower fails", slow, "fail"),
        Step("update", (*slow, "--update-baselines"), "pass"),
        Step("slower passes", slow, "pass"),
    ]
    for step in steps:
        _check(step, run(*step.args))
    return steps
