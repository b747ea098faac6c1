import json
import math
from pathlib import Path

import pytest

from quantgate.gate.baselines import BaselineError, BaselineStore, NoiseModel, judge
from quantgate.stats import Figure, cv, mad, median, worse_by


def fig(name: str, samples, higher: bool = True) -> Figure:
    return Figure(name, "tok/s", higher, tuple(samples))


def test_robust_summaries() -> None:
    assert median([3, 1, 2]) == 2
    assert mad([1, 2, 3, 100]) == 1.0  # the outlier does not move it
    assert cv([10, 10, 10]) == 0
    assert math.isclose(cv([9, 10, 11]), 1.4826 * 1 / 10)
    assert worse_by(80, 100, True) == pytest.approx(0.2)
    assert worse_by(120, 100, False) == pytest.approx(0.2)


def test_store_roundtrip_merge_and_isolation(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update("cpu-x", "a", [fig("decode_tps[c=1]", [10, 11, 12]), fig("other", [1])], {"k": "v"}, {}, "run1")
    store.update("cpu-x", "b", [fig("decode_tps[c=1]", [5])], None, {}, "run1")
    # refreshing one figure of "a" keeps its other figures and leaves "b" alone
    before_b = store.path("cpu-x", "b").read_text()
    store.update("cpu-x", "a", [fig("decode_tps[c=1]", [20, 20, 20])], {"k": "w"}, {}, "run2")
    a = store.load("cpu-x", "a")
    assert a is not None
    assert a.figures["decode_tps[c=1]"]["median"] == 20 and a.figures["other"]["median"] == 1
    assert a.figures["decode_tps[c=1]"]["samples"] == [20, 20, 20]
    assert a.kernels == {"k": "w"} and a.run_id == "run2"
    assert store.path("cpu-x", "b").read_text() == before_b
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "corrupt baseline"),
        (json.dumps({"schema": 99, "config": "a", "hardware": "cpu-x", "figures": {}}), "schema 99"),
        (json.dumps({"schema": 1, "config": "a", "hardware": "sm90", "figures": {}}), "for hardware 'sm90'"),
    ],
)
def test_bad_baselines_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "cpu-x" / "a.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        BaselineStore(tmp_path).load("cpu-x", "a")
    assert str(path) in str(info.value)


def test_judge_fails_beyond_tolerance_and_names_everything(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update("cpu-x", "w4a16", [fig("decode_tps[c=1]", [100, 100, 100])], None, {}, "r")
    base = store.load("cpu-x", "w4a16")
    noise = NoiseModel({"decode_tps": 0.10}, 0.25, source="noise.json")
    ok = judge("w4a16", fig("decode_tps[c=1]", [95, 95, 96]), base, noise)
    assert ok.outcome == "pass"
    bad = judge("w4a16", fig("decode_tps[c=1]", [80, 81, 79]), base, noise, ("compile_mode: X -> NONE",))
    assert bad.outcome == "fail"
    msg = bad.message()
    for part in ("'w4a16'", "decode_tps[c=1]", "baseline 100", "measured 80", "-20.0%", "tolerance 10.0%",
                 "compile_mode: X -> NONE"):
        assert part in msg
    better = judge("w4a16", fig("decode_tps[c=1]", [200]), base, noise)
    assert better.outcome == "pass"
    latency = judge("w4a16", fig("decode_tps[c=1]", [100], higher=False), base, noise)
    assert latency.outcome == "pass"


def test_missing_baseline_is_not_a_pass(tmp_path: Path) -> None:
    v = judge("x", fig("decode_tps[c=1]", [1]), None, NoiseModel({}, 0.25))
    assert v.outcome == "missing"
    assert "--update-baselines" in v.message()


def test_noise_model_default_and_file(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    assert store.noise("cpu-x", 0.3).tolerance("rel_decode_tps")[0] == 0.3
    store.write_noise("cpu-x", {"k": 3, "metrics": {"rel_decode_tps": {"tolerance": 0.08}}})
    tol, source = store.noise("cpu-x", 0.3).tolerance("rel_decode_tps")
    assert tol == 0.08 and "noise.json" in source


@pytest.mark.fault("baselines", "noise.json tolerance out of bounds (5.0, 0, -1, NaN, a string)",
                   "BaselineError naming the file and metric: a 10x slowdown can no longer pass")
@pytest.mark.parametrize("tol", [5.0, 0, -0.1, "0.1", None, True])
def test_noise_tolerance_bounds(tmp_path: Path, tol: object) -> None:
    store = BaselineStore(tmp_path)
    path = tmp_path / "cpu-x" / "noise.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"metrics": {"decode_tps": {"tolerance": tol}}}))
    # what the bound is for: at 5.0 the judge lets a 10x slowdown through
    base = store.update("cpu-x", "c", [fig("decode_tps[c=1]", [100, 100, 100])], None, {}, "r")
    assert base and judge("c", fig("decode_tps[c=1]", [10, 10, 10]), store.load("cpu-x", "c"),
                          NoiseModel({"decode_tps": 5.0}, 0.25)).outcome == "pass"
    with pytest.raises(BaselineError, match=rf"{path}: metric 'decode_tps' tolerance .* is out of bounds"):
        store.noise("cpu-x", 0.25)
    path.write_text('{"metrics": [1]}')
    with pytest.raises(BaselineError, match="'metrics' must be an object"):
        store.noise("cpu-x", 0.25)


def _base(tmp_path: Path, samples) -> object:
    store = BaselineStore(tmp_path)
    store.update("cpu-x", "c", [fig("decode_tps[c=1]", samples)], None, {}, "r")
    return store.load("cpu-x", "c")


def test_noisy_run_is_indeterminate_not_pass_or_fail(tmp_path: Path) -> None:
    base = _base(tmp_path, [100, 101, 99, 100, 100])
    noise = NoiseModel({"decode_tps": 0.10}, 0.25)
    # 20% worse on the median, but the run itself spreads over 2x: cannot tell
    v = judge("c", fig("decode_tps[c=1]", [40, 80, 160]), base, noise)
    assert v.outcome == "indeterminate"
    assert "too noisy" in v.message() and "(95%)" in v.message()
    # the same median with a tight run is a clear regression
    assert judge("c", fig("decode_tps[c=1]", [80, 80.5, 79.5]), base, noise).outcome == "fail"
    # a tight run inside the tolerance passes
    assert judge("c", fig("decode_tps[c=1]", [95, 95.5, 94.5]), base, noise).outcome == "pass"
    # inside the tolerance but so noisy that a 2x-tolerance regression cannot be ruled out
    assert judge("c", fig("decode_tps[c=1]", [60, 100, 170]), base, noise).outcome == "indeterminate"
