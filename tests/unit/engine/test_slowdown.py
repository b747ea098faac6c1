"""quantgate.engine.slowdown: the injected slowdown's arithmetic, on a simulated engine loop (no vLLM)."""

from __future__ import annotations

import pytest

from quantgate.engine import slowdown


class Loop:
    """A simulated engine busy loop on a virtual clock: each step takes `work` s, then `gap` s of loop work."""

    def __init__(self, work: float, gap: float = 0.0) -> None:
        self.now, self.work, self.gap = 0.0, work, gap

    def sleep(self, s: float) -> None:
        self.now += s

    def run(self, delay: slowdown.StepDelay | None, steps: int, idle_every: int = 0) -> float:
        start = self.now
        for i in range(steps):
            if idle_every and i and i % idle_every == 0:
                self.now += 5.0  # no request for a while
            t0 = self.now
            self.now += self.work
            if delay is not None:
                delay.after_step(t0, self.now, True, self.sleep)
            self.now += self.gap
        return steps / (self.now - start)


@pytest.mark.parametrize("s", [0.02, 0.03, 0.05, 0.2])
@pytest.mark.parametrize(("work", "gap"), [(0.004, 0.0002), (0.05, 0.001)])
def test_decode_rate_drops_by_the_fraction(s: float, work: float, gap: float) -> None:
    plain = Loop(work, gap).run(None, 400)
    slowed = Loop(work, gap).run(slowdown.StepDelay(s), 400)
    assert slowed / plain - 1 == pytest.approx(-s, abs=0.002)


def test_idle_time_between_requests_is_not_multiplied() -> None:
    plain = Loop(0.004).run(None, 1000, idle_every=100)
    slowed = Loop(0.004).run(slowdown.StepDelay(0.05), 1000, idle_every=100)
    busy_plain, busy_slowed = 1000 / plain - 9 * 5.0, 1000 / slowed - 9 * 5.0
    assert busy_slowed / busy_plain == pytest.approx(1 / 0.95, rel=0.01)


def test_steps_that_ran_nothing_are_not_delayed() -> None:
    d = slowdown.StepDelay(0.5)
    assert d.after_step(0.0, 1.0, False, lambda s: None) == 0.0
    assert d.after_step(1.0, 1.1, True, lambda s: None) == pytest.approx(0.05)


def test_env_parsing() -> None:
    assert slowdown.fraction_from_env(None) is None and slowdown.fraction_from_env(" ") is None
    assert slowdown.fraction_from_env("0.05") == 0.05
    for bad in ("5%", "-0.1", "0.95"):
        with pytest.raises(slowdown.SlowdownError, match="QUANTGATE_INJECT_SLOWDOWN"):
            slowdown.fraction_from_env(bad)


def test_register_is_a_no_op_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(slowdown.ENV, raising=False)
    slowdown.register()  # must not even import vLLM


def test_wrapped_step_keeps_the_result_and_is_marked() -> None:
    calls: list[int] = []

    def step(self: object) -> bool:
        calls.append(1)
        return True

    wrapped = slowdown.wrap_step(step, slowdown.StepDelay(0.01))
    assert wrapped(object()) is True and calls == [1]
    assert isinstance(wrapped._quantgate_slowdown, slowdown.StepDelay)  # type: ignore[attr-defined]


def test_entry_point_is_declared() -> None:
    from pathlib import Path

    from quantgate.config.matrix import tomllib  # tomli on Python 3.10

    pyproject = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    eps = pyproject["project"]["entry-points"]["vllm.general_plugins"]
    assert eps == {"quantgate_slowdown": "quantgate.engine.slowdown:register"}


def test_a_cpu_engine_holds_its_core_instead_of_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    # a sleeping engine thread gives its core away and on 2 cores waits to get it back (CI read 0.476x for 20%)
    def no_sleep(s: float) -> None:
        raise AssertionError(f"the CPU hold slept {s} s")

    monkeypatch.setattr(slowdown, "gpu_hold", lambda: None)
    monkeypatch.setattr(slowdown.time, "sleep", no_sleep)
    real = slowdown.time.perf_counter
    base = real()
    # the step's start and end as the wrapper reads them (a 10 ms step); later reads are the hold's, on the real clock
    clock = iter([base - 0.01, base])
    monkeypatch.setattr(slowdown.time, "perf_counter", lambda: next(clock, None) or real())

    def step(self: object) -> bool:
        return True

    wrapped = slowdown.wrap_step(step, slowdown.StepDelay(0.5))
    t0 = real()
    assert wrapped(object()) is True
    assert real() - t0 >= 0.005  # half of the 10 ms step, held by the busy wait
