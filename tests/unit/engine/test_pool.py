"""--qg-prestart: every selected engine starts at once, then each config is measured alone.

Runs the plugin through pytester with the scripted stand-in engine (tests/fake_vllm.py), as tests/plugin does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugin"))

from plugin_support import assert_no_engine_left, qg  # noqa: E402,F401

pytest_plugins = ["pytester"]


def test_prestart_starts_all_engines_before_the_first_test(qg, pytester: pytest.Pytester) -> None:  # noqa: F811
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    result = qg("--qg-prestart")
    result.assert_outcomes(passed=4, xfailed=3)  # the broken config still fails its start, as expected
    lines = result.stdout.str().splitlines()
    started = [i for i, ln in enumerate(lines) if "[prestart]" in ln and "starting engine" in ln]
    healthy = [i for i, ln in enumerate(lines) if "[prestart]" in ln and "healthy after" in ln]
    assert len(started) == 3 and len(healthy) == 2  # ref, w4 and broken start; broken never gets healthy
    assert max(started) < min(healthy)  # all launched before any was waited on
    assert_no_engine_left(pytester.path)


def test_prestarted_engines_are_timed_each_on_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression: prestart waited on engines in turn, so an engine ready after 1 s behind one ready after
    3 s was stamped 3 s (on the H200 every engine of a wave read the slowest one's start-up)."""
    import time

    from quantgate.config.matrix import load_matrix
    from quantgate.engine import process as engine_mod
    from quantgate.hardware import Hardware
    from quantgate.session import Run, Settings

    (tmp_path / "m.toml").write_text('[defaults]\nhardware = ["cpu"]\nmodel = "/m"\n'
                                     '[[config]]\nid = "slow"\n[[config]]\nid = "quick"\n')
    delay = {"slow": 0.8, "quick": 0.1}

    class FakeEngine:
        def __init__(self, cid: str) -> None:
            self.cid, self.port, self.started_at, self.ready_after_s = cid, 1, time.monotonic(), None

    def wait(eng: FakeEngine, timeout: float) -> float:
        time.sleep(delay[eng.cid])
        eng.ready_after_s = time.monotonic() - eng.started_at
        return eng.ready_after_s

    monkeypatch.setattr(engine_mod, "start", lambda cfg, models, log, **kw: FakeEngine(cfg.id))
    monkeypatch.setattr(engine_mod, "wait_healthy", wait)
    monkeypatch.setattr(Run, "resolve_models", lambda self, cfg: engine_mod.ResolvedModels("/m"))
    run = Run((load_matrix(tmp_path / "m.toml"),), Hardware("cpu-test", "test CPU"),
              Settings(results_dir=tmp_path / "r", baselines_dir=tmp_path / "b"), log=lambda msg: None)
    run.prestart(["slow", "quick"])
    slow, quick = (run.engines.running(c).ready_after_s for c in ("slow", "quick"))
    assert quick < 0.5 < slow < 1.5
