"""One matrix, one config on two builds, through the plugin with the scripted stand-in engine: each build's
engine runs in its own interpreter, each build keeps its own baseline naming the build, and the report has
the "Delta vs <reference build>" table."""

from __future__ import annotations

import json
import stat
import sys

import pytest
from plugin_support import HW, assert_no_engine_left

MATRIX = """
reference_build = "fast"

[gate]
mode = "absolute"
default_tolerance = 0.2

[workload]
outputs = {{ short = 8, long = 24 }}
contexts = [0]
repeats = 3
warmup = 1

[defaults]
model = "{model}"

[[config]]
id = "bf16-fast"
label = "Vanilla"
build = {{ python = "{fast}", name = "fast" }}

[[config]]
id = "bf16-slow"
build = {{ python = "{slow}", name = "slow" }}
"""


def test_one_config_on_two_builds_gets_a_delta_table(qg, pytester: pytest.Pytester) -> None:
    # the "slow build": another interpreter path whose stand-in engine decodes at half the speed
    slow = pytester.path / "slow-python"
    slow.write_text(f"#!/bin/sh\nFAKE_TOKENS_PER_S=400 exec {sys.executable} \"$@\"\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    (pytester.path / "matrix.toml").write_text(
        MATRIX.format(model=pytester.path / "model", fast=sys.executable, slow=slow))
    result = qg("--update-baselines", "-p", "no:randomly")
    result.assert_outcomes(passed=2 * 3)  # per config: its kernel snapshot and two decode figures
    assert_no_engine_left(pytester.path)

    base = json.loads((pytester.path / "baselines" / HW / "bf16-slow.json").read_text())
    assert base["environment"]["build"] == {"kind": "python", "value": str(slow), "label": "slow"}
    assert "torch" in base["environment"]["versions"]  # the build's interpreter's versions, asked of it
    assert json.loads((pytester.path / "baselines" / HW / "bf16-fast.json").read_text()
                      )["environment"]["build"]["label"] == "fast"

    report = next((pytester.path / "results").glob("*/report.md")).read_text()
    assert "## bf16-slow — bf16, —, build slow" in report
    head = report.index("## Delta vs fast (Vanilla ")
    table = report[head:report.index("\n## ", head + 1)]
    assert "Comparison: sequential, not paired" in table and "(the server's /metrics)" in table
    assert "| Build | Vanilla |" in table
    assert "| fast | " in table and " tok/s |" in table.split("| fast | ")[1].split("\n")[0]
    figures = json.loads(next((pytester.path / "results").glob("*/summary.json")).read_text())["configs"]
    # on CPU the figure of record is the server's decode time (quantgate.session.record_source)
    long_ = {cid: figures[cid]["figures"]["decode_tps[ctx=0,out=long]"]["median"] for cid in figures}
    assert {figures[cid]["figures"]["decode_tps[ctx=0,out=long]"]["source"] for cid in figures} == {"server"}
    expected = long_["bf16-slow"] / long_["bf16-fast"] - 1
    assert expected < 0  # the stand-in decodes at half the speed in the slow build's interpreter
    assert f"| slow | {expected:+.1%} |" in table  # the headline cell: ctx=0 long, as the seeds
    assert "### Vanilla: delta vs fast per cell" in table and "| Build | ctx=0 short | ctx=0 long |" in table
