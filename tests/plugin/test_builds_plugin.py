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
    assert "(the server's /metrics)" in table
    # the stand-in's matrix sets no KV cache size: two real engines would each size theirs from free memory
    assert ("| sequential, not paired (config 'bf16-fast' sets no KV cache size (VLLM_CPU_KVCACHE_SPACE or "
            "--kv-cache-memory-bytes), so vLLM would size it from the free memory) |") in table
    assert "| Build | Vanilla |" in table
    assert "| fast | " in table and " tok/s |" in table.split("| fast | ")[1].split("\n")[0]
    figures = json.loads(next((pytester.path / "results").glob("*/summary.json")).read_text())["configs"]
    # on CPU the figure of record is the server's decode time (quantgate.session.record_source)
    long_ = {cid: figures[cid]["figures"]["decode_tps[ctx=0,out=long]"]["median"] for cid in figures}
    assert {figures[cid]["figures"]["decode_tps[ctx=0,out=long]"]["source"] for cid in figures} == {"server"}
    expected = long_["bf16-slow"] / long_["bf16-fast"] - 1
    assert expected < 0  # the stand-in decodes at half the speed in the slow build's interpreter
    # the headline cell (ctx=0 long, as the seeds) with its unpaired interval: 3 and 3 requests reach 90%
    assert f"| slow | {expected:+.1%} ({expected:+.1%}..{expected:+.1%}, 90%) |" in table
    assert "### Vanilla: delta vs fast per cell" in table and "| Build | ctx=0 short | ctx=0 long |" in table


def test_builds_whose_engines_fit_are_measured_interleaved_and_judged_paired(
        qg, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = pytester.path / "slow-python"
    slow.write_text(f"#!/bin/sh\nFAKE_TOKENS_PER_S=400 exec {sys.executable} \"$@\"\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    matrix = MATRIX.format(model=pytester.path / "model", fast=sys.executable, slow=slow)
    # a KV cache size for each engine, and pairing without the memory check (the CI box's memory varies)
    matrix = matrix.replace("[defaults]\n", "[defaults]\nenv = { VLLM_CPU_KVCACHE_SPACE = \"1\" }\n")
    (pytester.path / "matrix.toml").write_text(matrix)
    monkeypatch.setenv("QUANTGATE_BUILD_PAIRING", "on")
    result = qg("--update-baselines", "-p", "no:randomly", "-s")
    result.assert_outcomes(passed=2 * 3)
    assert_no_engine_left(pytester.path)
    result.stdout.fnmatch_lines(["*'bf16-fast', 'bf16-slow': one config on 2 builds, paired (interleaved)*"])

    figures = json.loads(next((pytester.path / "results").glob("*/summary.json")).read_text())["configs"]
    ratios = figures["bf16-slow"]["figures"]["build_ratio[ctx=0,out=long]"]
    assert ratios["n"] == 3 and not ratios["gated"] and "build_ratio[ctx=0,out=long]" not in figures["bf16-fast"][
        "figures"]
    assert max(ratios["samples"]) < 0.9  # the slow build's stand-in, slot by slot
    report = next((pytester.path / "results").glob("*/report.md")).read_text()
    head = report.index("## Delta vs fast (Vanilla ")
    table = report[head:report.index("\n## ", head + 1)]
    row = next(line for line in table.splitlines() if line.startswith("| slow | "))
    assert row.endswith("| paired (interleaved) |") and "%, 75%) |" in row  # 3 pairs: at most 75%


def test_a_bad_pairing_setting_stops_the_run_with_one_line(qg, pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_BUILD_PAIRING", "yes")
    result = qg()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*quantgate: QUANTGATE_BUILD_PAIRING='yes': use auto, on or off"])
