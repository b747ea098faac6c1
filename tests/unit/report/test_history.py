"""Run history: synthetic series with a step at a known run, marks, concurrent appends, the CLI."""

from __future__ import annotations

import json
import multiprocessing
import random
from pathlib import Path

import pytest

from quantgate import cli
from quantgate.report import history
from quantgate.report.history import Entry, HistoryStore

FIG = "decode_tps[ctx=0,out=long]"


def _series(n: int, step_at: int | None, step: float, cv: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [100 * (1 + cv * rng.gauss(0, 1)) * (1 - step if step_at is not None and i >= step_at else 1)
            for i in range(n)]


def _entries(values: list[float], env_at: int | None = None, refresh_at: int | None = None) -> list[Entry]:
    out = []
    for i, v in enumerate(values):
        env = {"vllm": "0.32.0" if env_at is not None and i >= env_at else "0.31.0", "torch": "2.9.0"}
        out.append(Entry(run_id=f"run-{i:03d}", at=f"2026-12-{1 + i // 24:02d}T{i % 24:02d}:00:00Z",
                         hardware="cpu-test", config="w8a8",
                         figures={FIG: {"value": v, "unit": "tok/s", "higher_is_better": True, "gated": True}},
                         environment=env, baseline_refresh=i in (0, refresh_at)))
    return out


@pytest.mark.parametrize(("step", "cv"), [(0.05, 0.02), (0.10, 0.05), (0.03, 0.005)])
def test_a_step_is_found_at_its_run(step: float, cv: float) -> None:
    for seed in range(5):
        values = _series(30, 17, step, cv, seed)
        found = history.change_points(values)
        assert any(abs(i - 17) <= 1 for i in found), (seed, found)


def test_no_step_no_change_point_in_most_series() -> None:
    alarms = sum(bool(history.change_points(_series(30, None, 0, 0.05, seed))) for seed in range(40))
    assert alarms <= 4  # about 3% false alarms measured on 100 trials (docs/benchmark-history.md)


def test_noiseless_step_and_flat_series() -> None:
    assert history.change_points([10.0] * 8 + [9.0] * 8) == [8]
    assert history.change_points([10.0] * 16) == []
    assert history.change_points([10.0, 9.0, 8.0]) == []  # too short to split into two 3-run segments


def test_nan_runs_are_skipped_but_indices_kept() -> None:
    values = [100.0] * 10 + [90.0] * 10
    values[3] = float("nan")
    assert history.change_points(values) == [10]


def test_series_marks_refresh_env_change_and_step(tmp_path: Path) -> None:
    values = _series(24, 12, 0.06, 0.01, seed=3)
    s = history.series(_entries(values, env_at=12, refresh_at=18), FIG)
    assert s is not None and s.change_points == (12,)
    assert s.points[12].env_change == ("vllm 0.31.0 -> 0.32.0",)
    assert [i for i, p in enumerate(s.points) if p.refresh] == [0, 18]
    text = "\n".join(history.describe(s))
    line12 = next(line for line in text.splitlines() if line.lstrip().startswith("12 "))
    assert "CHANGE POINT" in line12 and "env: vllm 0.31.0 -> 0.32.0" in line12
    assert "(-6." in line12 or "(-5." in line12 or "(-7." in line12
    png = history.plot(s, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_baseline_written_elsewhere_counts_as_a_refresh() -> None:
    entries = _entries([1.0, 1.0, 1.0])
    entries = [Entry(**{**e.__dict__, "baseline_refresh": False, "baseline_run": b})
               for e, b in zip(entries, ["a", "a", "b"], strict=True)]
    s = history.series(entries, FIG)
    assert s is not None and [p.refresh for p in s.points] == [False, False, True]


def _append_many(root: str, worker: int) -> None:
    store = HistoryStore(Path(root))
    for i in range(200):
        store.append(Entry(run_id=f"w{worker}-{i}", at="", hardware="h", config="c",
                           figures={f"f{k}": {"value": float(k), "unit": "x"} for k in range(40)}))


def test_two_writers_append_whole_lines(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    store = HistoryStore(tmp_path)
    entries = store.load("c")
    assert store.skipped == [] and len(entries) == 400
    assert {e.run_id for e in entries} == {f"w{w}-{i}" for w in range(2) for i in range(200)}


def test_a_torn_line_is_skipped_and_reported(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    store.append(_entries([1.0])[0])
    with open(store.path("w8a8"), "a") as fh:
        fh.write('{"run_id": "half')
    assert len(store.load("w8a8")) == 1 and len(store.skipped) == 1 and "w8a8.jsonl:2" in store.skipped[0]


def test_config_id_that_cannot_name_a_file(tmp_path: Path) -> None:
    with pytest.raises(history.HistoryError, match="cannot name a history file"):
        HistoryStore(tmp_path).path("../etc")


def test_cli_history_prints_the_step_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "baselines" / "cpu-test" / "history"
    store = HistoryStore(root)
    for e in _entries(_series(20, 8, 0.05, 0.01, seed=1), env_at=8):
        store.append(e)
    plots = tmp_path / "plots"
    rc = cli.main(["history", "--hardware", "cpu-test", "--baselines", str(tmp_path / "baselines"),
                   "--plots", str(plots), "--figure", "decode_tps"])
    out = capsys.readouterr().out
    assert rc == 0
    step_line = next(line for line in out.splitlines() if "CHANGE POINT" in line)
    assert step_line.split()[:2] == ["8", "run-008"]
    assert (plots / "w8a8" / history.plot_name(FIG)).is_file()


def test_cli_history_without_runs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["history", "--hardware", "cpu-test", "--baselines", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no history under" in err and len(err.strip().splitlines()) == 1


def test_entry_round_trip() -> None:
    e = _entries([3.5])[0]
    assert Entry.from_dict(json.loads(e.to_line())) == e


def test_history_lives_beside_the_baselines_of_the_exact_gpu(tmp_path: Path) -> None:
    """sm90-h100 and sm90-h200 keep separate series: a change of GPU model is not a change point."""
    from types import SimpleNamespace

    run = SimpleNamespace(settings=SimpleNamespace(baselines_dir=tmp_path), baseline_key="sm90-h200",
                          hardware=SimpleNamespace(id="sm90"))
    assert history.default_root(run) == tmp_path / "sm90-h200" / "history"  # type: ignore[arg-type]
