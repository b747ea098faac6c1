"""The pytest layer: options and markers in, parametrized tests and assertions out, a summary at the end.

Everything measurable lives in quantgate.session; this module only maps it onto pytest.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ..config.matrix import (
    DEFAULT_MATRIX_GLOBS,
    EngineConfig,
    MatrixError,
)
from ..engine import process as engine_mod
from ..engine.launchers import LauncherError
from ..errors import QuantgateError
from ..gate.validity import report_lines as invalid_lines
from ..hardware import GPU_IDS, MARKERS, Hardware, detect, marker_for
from ..pairing import PairingError
from ..report.markdown import write_report
from ..session import Run, gated_figure_names
from ..workload import budget as budget_mod
from .fixtures import forget_unreachable_snapshot_sidecars
from .interrupts import deliver_lost_interrupt, install_signal_handlers, register_snapshot_guard
from .state import STATE_KEY, QuantgateState, _state, _write_failed
from .xdist import _load_worker_parts, _save_worker_part, _xdist_workers, config_of_nodeid


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantgate", "quantized vLLM performance gate")
    group.addoption("--qg-matrix", action="append", default=None, metavar="TOML",
                    help="config matrix file(s); default: the ini value quantgate_matrix")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="rewrite baselines (and kernel snapshots) of the configs that ran, from this run")
    group.addoption("--qg-baselines", default=None, metavar="DIR", help="baselines folder (default: baselines/)")
    group.addoption("--qg-results", default=None, metavar="DIR", help="results folder (default: results/)")
    group.addoption("--qg-serve-arg", action="append", default=[], metavar="ARG",
                    help="extra vllm serve argument for every config (or those of --qg-only), e.g. "
                         "--qg-serve-arg=--enforce-eager")
    group.addoption("--qg-only", action="append", default=[], metavar="ID",
                    help="config ids that --qg-serve-arg applies to")
    group.addoption("--qg-strict", action="store_true", default=False,
                    help="count indeterminate verdicts (too noisy to tell) and invalid figures (docs/"
                         "measurement.md) as failures")
    group.addoption("--qg-start-timeout", type=float, default=None, metavar="S",
                    help="seconds an engine may take to become healthy (default 900)")
    group.addoption("--qg-budget", type=float, default=None, metavar="S",
                    help="seconds each config's workloads may take after its engine is up, for every config "
                         "(default: budget_s in the matrix, else 900 on CPU, 1800 on GPU; 0: no budget)")
    group.addoption("--qg-prestart", action="store_true", default=False,
                    help="start every selected engine at once before the first test and wait for all of "
                         "them; measurements still run one at a time (the others idle)")
    group.addoption("--qg-benchmark-json", default=None, metavar="PATH",
                    help="also write the figures in pytest-benchmark's JSON schema here (always written to "
                         "results/<run>/benchmark.json; pytest-benchmark's --benchmark-json works too)")
    group.addoption("--qg-history", default=None, metavar="DIR",
                    help="run history folder (default: <baselines>/<hardware>/history)")
    parser.addini("quantgate_history", "run history folder, relative to rootdir (default: beside the baselines)",
                  default="")
    parser.addini("quantgate_matrix", "config matrix files (globs, relative to rootdir)", type="linelist",
                  default=list(DEFAULT_MATRIX_GLOBS))
    parser.addini("quantgate_baselines", "baselines folder, relative to rootdir", default="baselines")
    parser.addini("quantgate_results", "results folder, relative to rootdir", default="results")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        what = "any CPU" if marker == "cpu" else f"a {marker} GPU"
        config.addinivalue_line("markers", f"{marker}: quantgate configs that run on {what}")
    config.addinivalue_line("markers", "quantgate: a test generated from the quantgate config matrix")
    config.addinivalue_line("markers", "slow: slow test (real engines)")
    config.stash[STATE_KEY] = QuantgateState(config)
    if config.getoption("update_baselines") and hasattr(config.option, "update_snapshots"):
        config.option.update_snapshots = True  # one flag refreshes figures and kernel snapshots alike
    register_snapshot_guard(config)
    if not hasattr(config, "workerinput"):
        install_signal_handlers()
    if _xdist_workers(config) and config.getoption("qg_prestart", False):
        raise pytest.UsageError("quantgate: --qg-prestart starts every engine in one process on shared GPUs; "
                                "with -n each worker leases its own GPUs instead: drop one of the two")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Validate the matrix before collection so a bad file is one line and exit code 4, not a traceback."""
    state = _state(session.config)
    if not state.matrix_requested():
        return
    try:
        state.run  # noqa: B018
    except (MatrixError, LauncherError, PairingError) as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None


def _config_marks(cfg: EngineConfig, hardware: Hardware) -> list[Any]:
    # no xdist_group mark: pytest_xdist_make_scheduler groups a config's tests itself, and the mark is unknown
    # (--strict-markers: "'xdist_group' not found") where quantgate is installed without pytest-xdist
    marks: list[Any] = [pytest.mark.quantgate]
    marks += [getattr(pytest.mark, marker_for(h)) for h in cfg.hardware]
    if not cfg.applies_to(hardware.id):
        marks.append(pytest.mark.skip(
            reason=f"config {cfg.id!r} is for {', '.join(cfg.hardware)}; this machine is {hardware.id} "
                   f"({hardware.name})"))
    elif cfg.expected_slow is not None and cfg.expected_slow.applies_to(hardware.id):
        # skipped, never passed: the reason (the measured speed) shows in the summary
        marks.append(pytest.mark.skip(reason=f"expected slow on {hardware.id}: {cfg.expected_slow.reason}"))
    elif cfg.expected_failure is not None and cfg.expected_failure.applies_to(hardware.id):
        raises = engine_mod.EngineStartError if cfg.expected_failure.stage == "start" else None
        marks.append(pytest.mark.xfail(reason=cfg.expected_failure.reason, raises=raises, strict=True))
    return marks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qg_config_id" not in metafunc.fixturenames:
        return
    state = _state(metafunc.config)
    run = state.run  # loaded (and validated) at session start
    params = []
    for cfg in run.configs():
        matrix = run.matrix_of(cfg.id)
        marks = _config_marks(cfg, run.hardware)
        if metafunc.config.pluginmanager.hasplugin("timeout"):
            # pytest-timeout's ini default (300 s in quantgate's own pyproject) is for quick tests; a config's
            # first test builds its model, starts its engine and runs every workload, under quantgate's own
            # limits (start timeout, budget), which the mark leaves room for. Only where the plugin is loaded,
            # else the mark is unknown under --strict-markers.
            budget = budget_mod.budget_for(cfg, run.hardware.is_gpu, run.settings.budget_override_s)
            limit = budget_mod.config_test_timeout_s(budget, run.settings.start_timeout_s)
            marks = [*marks, pytest.mark.timeout(limit)]
        if "qg_figure" in metafunc.fixturenames:
            for name in gated_figure_names(cfg, matrix):
                params.append(pytest.param(cfg.id, name, id=f"{cfg.id}-{name}", marks=marks))
        else:
            params.append(pytest.param(cfg.id, id=cfg.id, marks=marks))
    if "qg_figure" in metafunc.fixturenames:
        metafunc.parametrize(("qg_config_id", "qg_figure"), params)
    else:
        metafunc.parametrize("qg_config_id", params)


def _config_id_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("qg_config_id") if callspec else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each config's tests together (one engine up at a time), reference configs first."""
    ids = [cid for cid in map(_config_id_of, items) if cid]
    if not ids:
        return
    run = _state(config).run
    order = {c.id: i for i, c in enumerate(run.configs())}
    refs = {run.reference_of(cid) for cid in ids} - {None}
    first_pos: dict[str, int] = {}
    for pos, item in enumerate(items):
        cid = _config_id_of(item)
        if cid is not None:
            first_pos.setdefault(cid, pos)

    def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
        pos, item = pair
        cid = _config_id_of(item)
        if cid is None:
            return (0, pos, 0)
        return (1, 0 if cid in refs else 1, order.get(cid, 0) * 100000 + pos)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


NO_BASELINES_EXIT = 6  # documented in docs/new-hardware.md; 4 stays pytest's usage error


def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state(session.config)
    selected = [cid for cid in map(_config_id_of, session.items) if cid]
    state.remaining = Counter(selected)
    _first_run_on_this_hardware(session.config, state, selected)
    expr = session.config.getoption("markexpr") or ""
    wanted = {tok for tok in re.findall(r"[\w-]+", expr) if tok in MARKERS}
    if not wanted:
        _prestart(session, state, selected)
        return
    try:
        hardware = state.hardware
    except MatrixError:
        hardware = detect()
    runnable = [cid for cid in selected if state.run.config(cid).applies_to(hardware.id)]
    if hardware.marker not in wanted and not runnable:
        hint = " (or set QUANTGATE_HARDWARE if detection is wrong)" if wanted & set(GPU_IDS) else ""
        pytest.exit(
            f"quantgate: -m {expr!r} selects configs for {', '.join(sorted(wanted))}, but this machine is "
            f"{hardware.id} ({hardware.name}); run it on a matching runner{hint}", returncode=4)
    _prestart(session, state, selected)


def _first_run_on_this_hardware(config: pytest.Config, state: QuantgateState, selected: list[str]) -> None:
    """No baseline at all for this hardware: one message and exit NO_BASELINES_EXIT before any engine
    starts, instead of one failure per test after a full run. Under --update-baselines: say what a first
    recording gives and what it does not (a noise model)."""
    if not selected or config.getoption("collectonly") or hasattr(config, "workerinput"):
        return  # an xdist worker leaves it to the controller (pytest_xdist_node_collection_finished)
    run = state.run
    ids = list(dict.fromkeys(selected))
    if state.update:
        note = run.first_baselines_note(ids)
        if note:
            run.log(note)
        return
    message = run.no_baselines_message(ids, _update_command(config))
    if message:
        pytest.exit(message, returncode=NO_BASELINES_EXIT)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist: the controller collects nothing itself; the first worker's collection stands in."""
    state = node.config.stash.get(STATE_KEY, None)
    if state is None or state._run is None or state.no_baselines_checked:
        return
    state.no_baselines_checked = True
    by_length = sorted((c.id for c in state.run.configs()), key=len, reverse=True)
    selected = [cid for cid in (config_of_nodeid(by_length, i) for i in ids) if cid]
    _first_run_on_this_hardware(node.config, state, selected)


def _update_command(config: pytest.Config) -> str:
    """The command that was run, with --update-baselines: `quantgate run` says how it was invoked."""
    invoked = os.environ.get("QUANTGATE_INVOKED_AS")
    if invoked:
        return f"{invoked} --update-baselines"
    return shlex.join(["pytest", *config.invocation_params.args, "--update-baselines"])


def _prestart(session: pytest.Session, state: QuantgateState, selected: list[str]) -> None:
    if not session.config.getoption("qg_prestart", False) or session.config.getoption("collectonly"):
        return
    run = state.run
    ids = list(dict.fromkeys(cid for cid in selected if run.config(cid).applies_to(run.hardware.id)))
    run.prestart(ids)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """pytest writes this report next: end the progress block first; count the outcome on the config's line.
    Outermost wrapper, so the xfail plugin has already turned an expected failure into `xfailed`."""
    report = yield
    state = item.config.stash.get(STATE_KEY, None)
    if state is not None:
        state.running = item.nodeid
        state.progress.pause()
        cid = _config_id_of(item)
        if cid is not None and (report.when == "call" or report.when == "setup" and not report.passed):
            xfail = hasattr(report, "wasxfail")
            state.progress.verdict(cid, ("xfailed" if report.skipped else "xpassed") if xfail else report.outcome)
    return report


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    deliver_lost_interrupt()
    cid = _config_id_of(item)
    if cid is None:
        return
    state = _state(item.config)
    state.remaining[cid] -= 1
    if state.remaining[cid] <= 0:
        _finish_config(state, cid)


def _finish_config(state: QuantgateState, cid: str) -> None:
    run = state.run
    if state.update and cid in state.ran_figures:
        state.ran_figures.pop(cid)
        _refresh_baseline(state, cid)
    if any(run.reference_of(other) == cid and n > 0 for other, n in state.remaining.items()):
        # configs still to come are gated as ratios to this one: measure it before its engine goes
        with contextlib.suppress(Exception):
            run.measurement(cid)
    run.release(cid)
    state.progress.finish(cid)
    worker = getattr(state.config, "workerinput", {}).get("workerid")
    if worker is not None:  # saved as it goes: an interrupted worker still has its verdicts in the report
        _save_worker_part(run, state, worker)
    # a reference measured only for ratios has no tests of its own left: stop it too
    for ref in {run.reference_of(c) for c in state.remaining} - {None}:
        if ref is not None and state.remaining.get(ref, 0) <= 0:
            run.release(ref)
            state.progress.finish(ref)


def _refresh_baseline(state: QuantgateState, cid: str) -> None:
    """Record the config's figures; a measurement that never happened is the tests' failure to report, but a
    measurement that could not be written is the refresh's own failure and must fail the run."""
    run = state.run
    try:
        run.measurement(cid)
    except Exception as exc:  # the engine never came up or died: nothing to record, the tests say why
        run.log(f"quantgate: baseline for {cid!r} not updated (no measurement): {exc}")
        return
    reason = run.validity(cid).reason
    if reason and not run.config(cid).baseline_of:  # quantgate.gate.validity: never a baseline from invalid figures
        _write_failed(state, run.store.path(run.baseline_key, cid), QuantgateError(f"figures INVALID: {reason}"),
                      config_id=cid)
        return
    try:
        # the whole grid was measured anyway: record every figure, gated or not, with its raw samples
        path = run.update_baseline(cid)
        if path is not None:  # None: a copy judged against another config's baseline writes none
            state.updated.append(path)
    except Exception as exc:
        _write_failed(state, run.store.path(run.baseline_key, cid), exc, config_id=cid)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    forget_unreachable_snapshot_sidecars(session.config)
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or state._run is None:
        engine_mod.stop_all()
        return
    run = state.run
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    try:
        if state.update:
            finished = {m.config.id for m in run.measured()}
            for cid in list(state.ran_figures):
                if exitstatus == pytest.ExitCode.INTERRUPTED and cid not in finished:
                    # Ctrl-C / SIGTERM: record what was measured, never measure anew (that ran a config's whole
                    # workload again after the interrupt, and wrote its baseline)
                    run.log(f"quantgate: baseline for {cid!r} not updated: interrupted before its measurement ended")
                    continue
                _finish_config(state, cid)
        if worker is not None:
            _save_worker_part(run, state, worker)  # the controller writes the one report
            return
        if _xdist_workers(session.config):
            measured = run.saved_measurements()
            _load_worker_parts(run, state)
        else:
            measured = run.measured()
        if measured:
            state.report_paths = _write_outputs(session.config, state, run, measured)
    finally:
        run.close()
        engine_mod.stop_all()
        state.running = None  # pytest's summary comes next: no prefix line for it
        state.progress.pause()
        if state.write_failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a refresh that wrote nothing never succeeds


def _write_outputs(config: pytest.Config, state: QuantgateState, run: Run, measured: list[Any]) -> list[Path]:
    """History (and the failing figures' history plots), the report, and the pytest-benchmark JSON."""
    from ..report import benchjson, history

    hist = config.getoption("qg_history") or config.getini("quantgate_history")
    root = (Path(config.rootpath) / hist) if hist else None
    plots: dict[tuple[str, str], Path] = {}
    try:  # a read-only or full baselines folder must not cost the run its report
        valid = [m for m in measured if m.validity.valid]  # invalid figures stay out of the history's series
        plots = history.record(run, valid, state.verdicts, refresh=state.update, root=root)
    except OSError as exc:
        run.log(f"quantgate: run history not recorded: {exc}")
    extra = [Path(p) for p in (config.getoption("qg_benchmark_json"),
                               None if state.benchmark_json_merged else getattr(config.option, "benchmark_json", None))
             if p]
    return write_report(run, measured, state.verdicts, history_plots=plots) + benchjson.write(run, measured, extra)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """pytest-benchmark writes --benchmark-json itself when it ran benchmarks of its own: ours join them."""
    from ..report import benchjson

    state = config.stash.get(STATE_KEY, None)
    if state is None or state._run is None or not getattr(config.option, "benchmark_json", None):
        return
    measured = state.run.measured()
    output_json["benchmarks"] += benchjson.document(state.run, measured)["benchmarks"]
    state.benchmark_json_merged = True


def pytest_unconfigure(config: pytest.Config) -> None:
    engine_mod.stop_all()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    tr = terminalreporter
    _summarize_expected_slow(tr, state)
    if not state.verdicts and not state.report_paths and not state.updated and not state.write_failures:
        return
    tr.write_sep("=", "quantgate verdicts")
    if state._run is not None:
        hw = state.run.hardware
        tr.write_line(f"hardware: {hw.id} ({hw.name}), baselines {hw.baseline_key}")
    for v in state.verdicts:
        base = f"{v.baseline:.4g}" if v.baseline is not None else "-"
        delta = f"{v.delta:+.1%}" if v.delta is not None else "-"
        tol = f"{v.tolerance:.0%}" if v.tolerance is not None else "-"
        tr.write_line(f"  {v.outcome.upper():8} {v.config_id:14} {v.figure:34} base {base:>9} "
                      f"now {v.measured:>9.4g} {delta:>7} tol {tol}")
    for line in invalid_lines(state.verdicts):
        tr.write_line(line, yellow=True)
    for path in state.updated:
        tr.write_line(f"baseline written: {path}")
    for line in state.write_failures:
        tr.write_line(f"REFRESH FAILED: {line}", red=True)
    if state.updated and state._run is not None and not state.run.store.has_noise(state.run.baseline_key):
        tr.write_line(f"no noise model for {state.run.baseline_key} yet: run `quantgate calibrate` on this machine "
                      f"(A/A runs, about 10 min) to set its tolerances")
    for path in state.report_paths:
        tr.write_line(f"report: {path}")


def _summarize_expected_slow(tr: Any, state: QuantgateState) -> None:
    """Configs skipped as expected slow here, with the reason: skipped is not passed, and says why."""
    if state._run is None:
        return
    hw = state.run.hardware.id
    slow = [state.run.config(cid) for cid in state.remaining]
    slow = [c for c in slow if c.applies_to(hw) and c.expected_slow and c.expected_slow.applies_to(hw)]
    if slow:
        tr.write_sep("=", "quantgate: expected slow here, skipped")
        for cfg in slow:
            assert cfg.expected_slow is not None
            tr.write_line(f"  SKIPPED  {cfg.id:14} {cfg.expected_slow.reason}")
