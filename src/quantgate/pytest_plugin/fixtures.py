"""The fixtures the suite's tests use (quantgate.suite): the gate, the kernel record, its snapshot, the
explanation of a change."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..errors import QuantgateError
from ..gate.baselines import BaselineError, Verdict, atomic_write
from ..kernels.record import KernelRecord, diff_records
from ..session import KernelLogUnavailable, Run
from .state import QuantgateState, _state, _write_failed


@contextlib.contextmanager
def _failures_as_messages(run: Run, config_id: str) -> Any:
    """An engine that fails is one clear message, not a traceback through quantgate's internals; an
    expected failure is re-raised as is so that xfail(raises=EngineStartError) can match it. Every error
    quantgate raises on purpose shares one root, so a new kind (AccuracyError was missed once) needs no edit."""
    try:
        yield
    except (QuantgateError, httpx.HTTPError) as exc:
        expected = run.config(config_id).expected_failure
        if expected is not None and expected.applies_to(run.hardware.id):
            raise
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def qg_config_id() -> str:  # replaced by parametrization; fails plainly if a test asks without it
    raise pytest.UsageError("qg_config_id is parametrized by the quantgate plugin from the matrix")


@pytest.fixture
def qg_figure() -> str:
    raise pytest.UsageError("qg_figure is parametrized by the quantgate plugin from the matrix")


@pytest.fixture(scope="session")
def qg_run(request: pytest.FixtureRequest) -> Run:
    return _state(request.config).run


@pytest.fixture
def qg_gate(request: pytest.FixtureRequest) -> Any:
    """qg_gate(config_id, figure): measure once per config, compare with the baseline, assert."""
    state = _state(request.config)

    def gate(config_id: str, figure: str) -> Verdict:
        run = state.run
        state.ran_figures[config_id].add(figure)
        with _failures_as_messages(run, config_id):
            if state.update and not run.config(config_id).baseline_of:  # a copy writes no baseline: judged
                fig = run.measurement(config_id).figures[figure]
                try:
                    was = run.verdict(config_id, figure).baseline
                except BaselineError:
                    was = None  # a corrupt or foreign file is what --update-baselines is for
                verdict = Verdict(config_id, figure, fig.unit, "updated", fig.value, was)
            else:
                verdict = run.verdict(config_id, figure)
            _gate_validity(state, run, verdict)  # invalid figures: neither pass nor fail, said before any verdict
        state.verdicts.append(verdict)
        if verdict.outcome in ("fail", "missing"):
            pytest.fail(verdict.message(), pytrace=False)
        if verdict.outcome == "indeterminate":
            if state.config.getoption("qg_strict"):
                pytest.fail(verdict.message(), pytrace=False)
            pytest.xfail(f"INDETERMINATE: {verdict.message()}")  # neither pass nor fail, and visible
        return verdict

    return gate


def _gate_validity(state: QuantgateState, run: Run, verdict: Verdict) -> None:
    """Invalid figures (quantgate.gate.validity) end the test as xfail with the reason, a failure under
    --qg-strict and under --update-baselines (which records nothing from them)."""
    reason = run.validity(verdict.config_id).reason
    if not reason:
        return
    state.verdicts.append(replace(verdict, outcome="invalid", notes=(reason, *verdict.notes)))
    line = f"INVALID: {verdict.config_id}: {reason}"
    if state.update:
        pytest.fail(f"{line}; its baseline is not refreshed from invalid figures", pytrace=False)
    if state.config.getoption("qg_strict"):
        pytest.fail(line, pytrace=False)
    pytest.xfail(line)


@pytest.fixture
def qg_kernels(request: pytest.FixtureRequest) -> Any:
    """qg_kernels(config_id): the normalized kernel record parsed from the running engine's log."""
    state = _state(request.config)

    def kernels(config_id: str) -> dict[str, Any]:
        state.ran_figures[config_id]  # touched: --update-baselines records this config's figures too
        with _failures_as_messages(state.run, config_id):
            try:
                return state.run.kernel_record(config_id)
            except KernelLogUnavailable as exc:
                pytest.skip(str(exc))

    return kernels


@pytest.fixture
def qg_explain(request: pytest.FixtureRequest) -> Any:
    """qg_explain(config_id): one paragraph for a failed kernel snapshot: the kernel change against the
    baseline's record and every gated figure's delta, measured now (the figures' own tests reuse it)."""
    state = _state(request.config)

    def explain(config_id: str) -> str:
        run = state.run
        try:
            base = run.baseline(config_id)
            m = run.measurement(config_id)
        except Exception as exc:  # the snapshot diff below still says what changed
            return f"kernel selection changed for {config_id!r} (figures unavailable: {exc})"
        if base is None:  # nothing to compare with: a first run on this hardware, not a change
            return (f"no baseline or kernel snapshot recorded for config {config_id!r} on {run.baseline_key}: "
                    f"record them with `pytest --update-baselines`")
        lines = [f"kernel selection changed for config {config_id!r}"]
        if base.kernels is not None:
            lines += ["  " + d for d in diff_records(KernelRecord.from_dict(base.kernels),
                                                      KernelRecord.from_dict(m.kernels))]
        for name, fig in sorted(m.figures.items()):
            if not fig.gated:
                continue
            v = run.verdict(config_id, name)
            delta = f"{v.delta:+.1%}" if v.delta is not None else "no baseline"
            lines.append(f"  {name}: {delta} ({v.outcome})")
        return "\n".join(lines)

    return explain


@pytest.fixture
def qg_kernel_snapshot(request: pytest.FixtureRequest, snapshot: Any) -> Any:
    """A syrupy snapshot kept per hardware: baselines/<hardware>/kernels/<test module>/<test>.json (the module
    folder lets syrupy relate snapshots to their tests and report unused ones)."""
    from syrupy.extensions.json import JSONSnapshotExtension

    state = _state(request.config)
    cid = request.node.callspec.params.get("qg_config_id") if hasattr(request.node, "callspec") else None
    if cid is not None and state.run.config(cid).baseline_of:
        # a copy of a config (calibration, injected slowdown) must pick what its original's baseline recorded
        base = state.run.baseline(cid)
        if base is not None and base.kernels is not None:
            return base.kernels
    folder = state.run.store.root / state.run.baseline_key / "kernels"

    class PerHardwareKernels(JSONSnapshotExtension):
        @classmethod
        def dirname(cls, *, test_location: Any) -> str:
            return str(folder / test_location.basename)

        def read_snapshot_data_from_location(self, **kwargs: Any) -> Any:
            try:
                return super().read_snapshot_data_from_location(**kwargs)
            except NotADirectoryError:  # a file where the folder goes: no snapshot; a refresh names the file
                return None

        @classmethod
        def write_snapshot(cls, *, snapshot_location: str, **kwargs: Any) -> None:
            # syrupy records a write error only as a failed comparison; name the file and fail the run too
            try:
                super().write_snapshot(snapshot_location=snapshot_location, **kwargs)
            except Exception as exc:
                _write_failed(state, snapshot_location, exc)
                raise

        @classmethod
        def write_snapshot_collection(cls, *, snapshot_collection: Any, name_order: Any = None) -> None:
            # the same temp-file-fsync-rename as the baselines: an interrupted refresh leaves the old snapshot
            data = next(iter(snapshot_collection)).data
            if not isinstance(data, str):
                raise TypeError(f"kernel snapshot must serialize to text, got {type(data).__name__}")
            atomic_write(Path(snapshot_collection.location), data)

    return snapshot.use_extension(PerHardwareKernels)


def forget_unreachable_snapshot_sidecars(config: pytest.Config) -> None:
    """syrupy 7 (under pytest-xdist) removes each written snapshot's .lock/.tmp sidecars when the session
    ends; where the snapshot's folder could not be made (a refresh that failed, which quantgate reports by file)
    its unlink raises NotADirectoryError and pytest ends in a traceback instead of our summary. No sidecar can
    exist where the folder does not, so those locations are dropped before syrupy's own hook runs."""
    locations = getattr(getattr(config, "_syrupy", None), "_written_snapshot_locations", None)
    if isinstance(locations, set):
        for location in [loc for loc in locations if not Path(loc).parent.is_dir()]:
            locations.discard(location)
