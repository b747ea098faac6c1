"""Every run appends to the history and writes pytest-benchmark JSON that pytest-benchmark's own tools read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from plugin_support import HW


def _history(pytester: pytest.Pytester, config_id: str) -> list[dict]:
    path = pytester.path / "baselines" / HW / "history" / f"{config_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_runs_append_two_entries_and_compare_reads_their_benchmark_json(qg, pytester: pytest.Pytester) -> None:
    extra = pytester.path / "out" / "first.json"
    qg("--update-baselines", f"--qg-benchmark-json={extra}").assert_outcomes(passed=4, xfailed=3)
    slow = qg("--qg-serve-arg=--enforce-eager", "--qg-only=w4")
    slow.assert_outcomes(passed=1, failed=3, xfailed=3)

    for cid in ("ref", "w4"):
        entries = _history(pytester, cid)
        assert len(entries) == 2, entries
        assert [e["baseline_refresh"] for e in entries] == [True, False]
        assert entries[1]["baseline_run"] == entries[0]["run_id"]  # judged against the first run's baseline
        assert "rel_decode_tps[ctx=0,out=long]" in entries[0]["figures"] or cid == "ref"
    w4 = _history(pytester, "w4")
    fig = "rel_decode_tps[ctx=0,out=long]"
    assert w4[1]["figures"][fig]["value"] < w4[0]["figures"][fig]["value"]  # the eager run is slower

    runs = sorted(p for p in (pytester.path / "results").iterdir() if p.is_dir())
    assert len(runs) == 2
    first, second = (r / "benchmark.json" for r in runs)
    assert json.loads(extra.read_text())["benchmarks"] == json.loads(first.read_text())["benchmarks"]
    # the failing run's report links the history plot of its failing figure
    report = (runs[1] / "report.md").read_text()
    assert "History of the failing figures" in report and "history/w4/" in report
    linked = [line for line in report.splitlines() if line.startswith("- w4 `rel_decode_tps[ctx=0,out=long]`")]
    assert linked and (runs[1] / linked[0].split("](")[1].rstrip(")")).is_file()

    out = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", "--columns=min,max,mean,ops,rounds",
                          str(first), str(second)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = out.stdout
    assert f"w4/{fig}" in table and "ref/decode_tps[ctx=0,out=long]" in table
    assert table.count(f"w4/{fig}") == 2  # one row per file
    body = json.loads(second.read_text())
    entry = next(b for b in body["benchmarks"] if b["name"] == f"w4/{fig}")
    # ops (bigger is better to the charting tools) is the harmonic mean of the ratio's samples
    samples = [1 / d for d in entry["stats"]["data"]]
    assert entry["stats"]["ops"] == pytest.approx(len(samples) / sum(1 / s for s in samples))
    assert entry["extra_info"]["unit"] == "x ref" and entry["extra_info"]["higher_is_better"] is True
    assert body["machine_info"]["quantgate"]["hardware"] == HW and "id" in body["commit_info"]


def test_benchmark_json_of_pytest_benchmark_carries_our_figures(qg, pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-benchmark's own --benchmark-json: alone (we write it), and beside a benchmark-fixture test
    (pytest-benchmark writes it, with our figures merged in)."""
    alone = pytester.path / "alone.json"
    qg("--update-baselines", f"--benchmark-json={alone}").assert_outcomes(passed=4, xfailed=3)
    names = {b["name"] for b in json.loads(alone.read_text())["benchmarks"]}
    assert "ref/decode_tps[ctx=0,out=long]" in names

    # under an outer `pytest -n`, pytest-benchmark reads this worker variable and disables its benchmarks
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_speed="import pytest\n\n\n@pytest.mark.cpu\ndef test_speed(benchmark):\n"
                                   "    benchmark(sum, range(100))\n")
    both = pytester.path / "both.json"
    qg(f"--benchmark-json={both}", "-k", "w4 or speed").assert_outcomes(passed=4)  # w4: 3, test_speed
    body = json.loads(both.read_text())
    names = {b["name"] for b in body["benchmarks"]}
    assert "test_speed" in names and "w4/rel_decode_tps[ctx=0,out=long]" in names
