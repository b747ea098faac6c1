"""quantgate as another project installs it: the wheel, no extras, in a fresh venv, collecting its own matrix.

Guards issue 10's `Failed: 'xdist_group' not found in markers configuration option` (the plugin marked tests
for pytest-xdist, a dev extra only) and any other runtime import that only the dev environment provides.
No engine starts (collection only); dependencies come from the package index, as in a user's project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# 59 s on this 2-core box when quiet, 220 s while other test runs loaded it (pip resolving and unpacking)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(720)]

MATRIX = """\
[gate]
mode = "relative"
reference = "bf16"

[workload]
outputs = { short = 16 }
contexts = [0]

[defaults]
hardware = ["cpu"]

[[config]]
id = "bf16"
model = { recipe = "qwen3-dense" }

[[config]]
id = "w8a8"
model = { recipe = "qwen3-dense", quantization = "w8a8" }
"""


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # without our PYTHONPATH: the fresh venv must import quantgate from the wheel, not from this checkout
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_in_a_fresh_venv_collects_a_matrix(tmp_path: Path) -> None:
    # build from a copy of what the wheel packages: an in-tree build would leave build/ in the checkout
    src = tmp_path / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], tmp_path, 300)
    wheel = next(dist.glob("quantgate-*.whl"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], tmp_path, 420)  # no extras: no xdist, no vllm
    where = _run([str(py), "-c", "import quantgate.pytest_plugin as p, importlib.util as u; print(p.__file__, "
                  "u.find_spec('xdist') is None)"], tmp_path, 60).stdout.split()
    assert where[0].startswith(str(env_dir)) and where[1] == "True", where  # the wheel's copy; no pytest-xdist

    project = tmp_path / "project"
    project.mkdir()
    (project / "perf.toml").write_text(MATRIX)
    (project / "test_perf.py").write_text("from quantgate.suite import *  # noqa: F401,F403\n")
    (project / "pytest.ini").write_text("[pytest]\nquantgate_matrix = perf.toml\naddopts = --strict-markers -ra\n")
    out = _run([str(py), "-m", "pytest", "--collect-only", "-q", "-m", "cpu", "-p", "no:cacheprovider"],
               project, 120).stdout
    assert "test_perf.py::test_kernel_selection[bf16]" in out, out
    assert "test_perf.py::test_figure[w8a8-rel_decode_tps[ctx=0,out=short]]" in out, out
    assert "3 tests collected" in out, out
