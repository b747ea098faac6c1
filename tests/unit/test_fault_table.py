"""docs/faults.md is generated from the tests marked `fault`; a stale table (a case added, renamed or
removed without regenerating) fails here, with the command that fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fault_table_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "faults.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "fault", f"--fault-table={fresh}",
         "-p", "no:cacheprovider"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert fresh.read_text(encoding="utf-8") == (REPO / "docs" / "faults.md").read_text(encoding="utf-8"), (
        "docs/faults.md is stale: regenerate it with "
        "`pytest --collect-only -q -m fault --fault-table=docs/faults.md`")
