"""The pytest layer: options and markers in, parametrized tests and assertions out, a summary at the end.

Everything measurable lives in quantgate.session; this module only maps it onto pytest.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import signal
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO, cast

import httpx
import pytest

from . import engine as engine_mod
from .baselines import BaselineError, Verdict, atomic_write
from .errors import QuantgateError
from .hardware import GPU_IDS, MARKERS, Hardware, detect, marker_for
from .kernels import KernelRecord, diff_records
from .launchers import LauncherError
from .launchers import from_env as launcher_from_env
from .matrix import DEFAULT_MATRIX_GLOBS, EngineConfig, MatrixError, check_serve_args, load_matrices, matrix_files
from .progress import NullProgress, Output, PlainProgress, Progress, RichProgress
from .report import write_report
from .session import KernelLogUnavailable, Run, Settings, gated_figure_names, new_run_id

STATE_KEY = pytest.StashKey["QuantgateState"]()
CONFIG_TEST_TIMEOUT_S = 3600


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
                    help="count indeterminate verdicts (too noisy to tell) as failures")
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


class QuantgateState:
    """Per-session state, created lazily: unit tests in a repo that has the plugin installed pay nothing."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._run: Run | None = None
        self.remaining: Counter[str] = Counter()
        self.ran_figures: dict[str, set[str]] = defaultdict(set)
        self.verdicts: list[Verdict] = []
        self.updated: list[Path] = []
        # "<file>: <cause>" for every baseline or kernel snapshot a refresh failed to write: the run fails
        self.write_failures: list[str] = []
        self.report_paths: list[Path] = []
        self.benchmark_json_merged = False  # pytest-benchmark wrote --benchmark-json with our figures in it
        self.progress: Progress = NullProgress()
        self.running: str | None = None  # the test pytest is running (its result is written next)
        self.no_baselines_checked = False  # under xdist: once, on the first worker's collection
        # pytest-xdist workers share the controller's run id, hence one results folder and one report
        workerinput = getattr(config, "workerinput", None)
        self.run_id: str = (workerinput or {}).get("quantgate_run_id") or new_run_id()

    @property
    def update(self) -> bool:
        return bool(self.config.getoption("update_baselines"))

    def _path(self, option: str, ini: str) -> Path:
        value = self.config.getoption(option) or self.config.getini(ini)
        path = Path(value)
        return path if path.is_absolute() else Path(self.config.rootpath) / path

    def matrix_requested(self) -> bool:
        if self.config.getoption("qg_matrix"):
            return True
        root = Path(self.config.rootpath)
        return any(any(root.glob(p)) for p in self.config.getini("quantgate_matrix"))

    @property
    def run(self) -> Run:
        if self._run is None:
            paths = matrix_files(self.config.getoption("qg_matrix"), self.config.getini("quantgate_matrix"),
                                 Path(self.config.rootpath))
            hardware = detect()
            matrices = load_matrices(paths, hardware.id)
            check_serve_args(tuple(self.config.getoption("qg_serve_arg")), "--qg-serve-arg")
            settings = Settings(
                results_dir=self._path("qg_results", "quantgate_results"),
                baselines_dir=self._path("qg_baselines", "quantgate_baselines"),
                extra_serve_args=tuple(self.config.getoption("qg_serve_arg")),
                extra_serve_args_for=tuple(self.config.getoption("qg_only")),
                launcher=launcher_from_env(),
            )
            budget = self.config.getoption("qg_budget")
            if budget is not None:
                if not math.isfinite(budget) or budget < 0:
                    raise MatrixError(f"--qg-budget {budget:g}: must be a number of seconds >= 0 (0: no budget)")
                settings.budget_override_s = budget
            if self.config.getoption("qg_start_timeout"):
                settings.start_timeout_s = float(self.config.getoption("qg_start_timeout"))
            self.progress = _screen_progress(self.config, self)
            self._run = Run(matrices, hardware, settings, run_id=self.run_id, log=self.progress.message,
                            progress=self.progress)
        return self._run

    @property
    def hardware(self) -> Hardware:
        return self.run.hardware


class _TerminalStream(io.TextIOBase):
    """pytest's terminal writer as a file (for rich and the plain lines). Each write steps out of pytest's
    output capture, as pytest's own live logging does: during a test, fd 1 is pytest's capture file."""

    def __init__(self, tw: Any, capman: Any, tty: bool) -> None:
        self._tw, self._capman, self._tty = tw, capman, tty

    def _uncaptured(self) -> Any:
        return self._capman.global_and_fixture_disabled() if self._capman is not None else contextlib.nullcontext()

    def write(self, text: str) -> int:
        _deliver_lost_interrupt()  # every progress line (a cell measured, a warm-up begun) is a checkpoint
        with self._uncaptured():
            self._tw.write(text, flush=True)
        return len(text)

    def end_line(self) -> None:
        if self._tw.width_of_current_line:
            with self._uncaptured():
                self._tw.line()

    def flush(self) -> None:
        self._tw.flush()

    def isatty(self) -> bool:
        return self._tty


def _screen_progress(config: pytest.Config, state: QuantgateState) -> Progress:
    """Rich on a terminal, plain lines in a CI log (QUANTGATE_PROGRESS=rich|plain|off overrides), written in
    blocks never inside pytest's progress line: a block first ends pytest's line, and after it the line
    starts again with pytest's prefix (file name), so no result letter stands alone (pytest -v writes the
    test id again itself)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    choice = os.environ.get("QUANTGATE_PROGRESS", "").strip().lower()
    if tr is None or hasattr(config, "workerinput") or choice == "off":
        return NullProgress()  # an xdist worker's output reaches no screen
    terminal = choice == "rich" or (choice != "plain" and bool(getattr(tr, "isatty", False)))
    stream = _TerminalStream(tr._tw, config.pluginmanager.get_plugin("capturemanager"), terminal)

    def close_block() -> None:
        tr.currentfspath = None
        nodeid = state.running
        if nodeid is not None and tr.showfspath and not tr.showlongtestinfo:
            # pytest writes the next letter right where the cursor is: give it its prefix line back
            fspath = Path(config.rootpath) / nodeid.split("::")[0]
            stream.write(f"{os.path.relpath(fspath, tr.startpath)} ")
            tr.currentfspath = fspath

    output = Output(cast(TextIO, stream), stream.end_line, close_block)
    return RichProgress(output, force_terminal=True, width=tr._tw.fullwidth) if terminal else PlainProgress(output)


def _state(config: pytest.Config) -> QuantgateState:
    return config.stash[STATE_KEY]


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
    if hasattr(config.option, "update_snapshots"):
        config.pluginmanager.register(_KeepSnapshotsOfTestsNotRun(), "quantgate-keep-snapshots")
    if not hasattr(config, "workerinput"):
        _install_sigterm()
    if _xdist_workers(config) and config.getoption("qg_prestart", False):
        raise pytest.UsageError("quantgate: --qg-prestart starts every engine in one process on shared GPUs; "
                                "with -n each worker leases its own GPUs instead: drop one of the two")


def _xdist_workers(config: pytest.Config) -> int:
    """Workers pytest-xdist will start (0 without -n); on a worker itself, 0."""
    if hasattr(config, "workerinput"):
        return 0
    n = getattr(config.option, "numprocesses", None)
    return n if isinstance(n, int) else 0


class _KeepSnapshotsOfTestsNotRun:
    """A run stopped early (Ctrl-C, SIGTERM, -x) never ran some kernel tests: syrupy counts their snapshots as
    unused. In update mode it deleted them (seen: Ctrl-C during a refresh removed other configs' kernel
    snapshots); in a gate run it ORed its "unused" status 1 into pytest's 2, so a Ctrl-C exited 3, pytest's
    internal error. Before syrupy's own session finish, switch its unused-snapshot check off for such a run."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail:
            session.config.option.disable_unused_snapshots = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker gets the controller's run id."""
    node.workerinput["quantgate_run_id"] = _state(node.config).run_id


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist: send all of a config's tests (and, on a relative gate, its reference's) to one worker,
    so each engine starts once. Our own scope rule rather than --dist loadgroup, whose node-id tagging does
    nothing under pytest 9.2 (xdist 3.8 sets item._nodeid, which pytest no longer reads)."""
    state = config.stash.get(STATE_KEY, None)
    if state is None or state._run is None or config.getoption("dist", "no") not in _SPREAD_MODES:
        return None
    from xdist.scheduler import LoadScopeScheduling

    run = state.run
    by_length = sorted((c.id for c in run.configs()), key=len, reverse=True)

    class ConfigScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(run, by_length, nodeid)

    return ConfigScheduling(config, log)


_SPREAD_MODES = ("load", "loadgroup", "loadscope", "loadfile", "worksteal")


def xdist_scope(run: Run, config_ids: list[str], nodeid: str) -> str:
    """The scheduling unit of a test: its config's reference (or the config), found in the parameter id
    (`test_figure[<config>-<figure>]`); any other test is its own unit."""
    cid = config_of_nodeid(config_ids, nodeid)
    return nodeid if cid is None else "quantgate:" + (run.reference_of(cid) or cid)


def config_of_nodeid(config_ids: list[str], nodeid: str) -> str | None:
    """The config a test id belongs to, from its parameter id; config_ids longest first."""
    param = nodeid[nodeid.find("[") + 1:-1] if nodeid.endswith("]") and "[" in nodeid else ""
    for cid in config_ids:  # longest first: "w4a16-eagle3" before "w4a16"
        if param == cid or param.startswith(cid + "-"):
            return cid
    return None


# Signals whose KeyboardInterrupt pytest has not seen yet. One raised while a finalizer runs (httpx closing a
# finished stream) is printed as "Exception ignored" and lost: a Ctrl-C in the warm-up of a real server let the
# whole measurement run on and exit 0. Raised again at the next checkpoint until pytest_keyboard_interrupt.
_PENDING_INTERRUPTS: list[int] = []


def _install_sigterm() -> None:
    """SIGTERM (a CI cancel) unwinds like Ctrl-C, so session teardown stops every engine; both are kept
    pending until pytest has seen them."""
    def handler(signum: int, frame: Any) -> None:
        _PENDING_INTERRUPTS.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, handler)


_INTERRUPT_SEEN: list[bool] = []  # pytest saw one: teardown (stopping engines, writing) runs undisturbed


def _deliver_lost_interrupt() -> None:
    if _PENDING_INTERRUPTS and not _INTERRUPT_SEEN:
        raise KeyboardInterrupt(f"signal {_PENDING_INTERRUPTS[-1]} (raised again: the first was lost)")


def pytest_keyboard_interrupt(excinfo: Any) -> None:
    _INTERRUPT_SEEN.append(True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Validate the matrix before collection so a bad file is one line and exit code 4, not a traceback."""
    state = _state(session.config)
    if not state.matrix_requested():
        return
    try:
        state.run  # noqa: B018
    except (MatrixError, LauncherError) as exc:
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
            # first test starts its engine and runs every workload (engine start alone may take 900 s), with
            # quantgate's own limits. Still finite: a hang ends with a stack. Only where the plugin is loaded,
            # else the mark is unknown under --strict-markers.
            marks = [*marks, pytest.mark.timeout(CONFIG_TEST_TIMEOUT_S)]
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
    _deliver_lost_interrupt()
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
    try:
        # the whole grid was measured anyway: record every figure, gated or not, with its raw samples
        path = run.update_baseline(cid)
        if path is not None:  # None: a copy judged against another config's baseline writes none
            state.updated.append(path)
    except Exception as exc:
        _write_failed(state, run.store.path(run.baseline_key, cid), exc, config_id=cid)


def _write_failed(state: QuantgateState, path: Path | str, exc: BaseException, config_id: str | None = None) -> None:
    line = f"{path}: not written: {type(exc).__name__}: {exc}"
    state.write_failures.append(line)
    if state._run is not None:
        state.run.log(f"quantgate: {line}")
    if config_id is not None:  # its figures were reported UPDATED when measured: they were not
        state.verdicts = [replace(v, outcome="unwritten") if v.config_id == config_id and v.outcome == "updated"
                          else v for v in state.verdicts]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or state._run is None:
        engine_mod.stop_all()
        return
    run = state.run
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    try:
        if state.update:
            for cid in list(state.ran_figures):
                slot = run._slots.get(cid)
                if exitstatus == pytest.ExitCode.INTERRUPTED and (slot is None or slot.measurement is None):
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
            measured = [s.measurement for s in run._slots.values() if s.measurement is not None]
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
    from . import benchjson, history

    hist = config.getoption("qg_history") or config.getini("quantgate_history")
    root = (Path(config.rootpath) / hist) if hist else None
    plots: dict[tuple[str, str], Path] = {}
    try:  # a read-only or full baselines folder must not cost the run its report
        plots = history.record(run, measured, state.verdicts, refresh=state.update, root=root)
    except OSError as exc:
        run.log(f"quantgate: run history not recorded: {exc}")
    extra = [Path(p) for p in (config.getoption("qg_benchmark_json"),
                               None if state.benchmark_json_merged else getattr(config.option, "benchmark_json", None))
             if p]
    return write_report(run, measured, state.verdicts, history_plots=plots) + benchjson.write(run, measured, extra)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """pytest-benchmark writes --benchmark-json itself when it ran benchmarks of its own: ours join them."""
    from . import benchjson

    state = config.stash.get(STATE_KEY, None)
    if state is None or state._run is None or not getattr(config.option, "benchmark_json", None):
        return
    measured = [s.measurement for s in state.run._slots.values() if s.measurement is not None]
    output_json["benchmarks"] += benchjson.document(state.run, measured)["benchmarks"]
    state.benchmark_json_merged = True


def _save_worker_part(run: Run, state: QuantgateState, worker: str) -> None:
    if not state.verdicts and not state.updated and not state.write_failures:
        return
    folder = run.results / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"verdicts": [asdict(v) for v in state.verdicts], "updated": [str(p) for p in state.updated],
            "write_failures": state.write_failures}
    atomic_write(folder / f"{worker}.json", json.dumps(body, default=str))


def _load_worker_parts(run: Run, state: QuantgateState) -> None:
    for part in sorted((run.results / "workers").glob("*.json")):
        body = json.loads(part.read_text(encoding="utf-8"))
        for v in body.get("verdicts", []):
            v["kernel_diff"] = tuple(v.get("kernel_diff") or ())
            v["interval"] = tuple(v["interval"]) if v.get("interval") else None
            state.verdicts.append(Verdict(**v))
        state.updated += [Path(p) for p in body.get("updated", [])]
        state.write_failures += body.get("write_failures", [])


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
        state.verdicts.append(verdict)
        if verdict.outcome in ("fail", "missing"):
            pytest.fail(verdict.message(), pytrace=False)
        if verdict.outcome == "indeterminate":
            if state.config.getoption("qg_strict"):
                pytest.fail(verdict.message(), pytrace=False)
            pytest.xfail(f"INDETERMINATE: {verdict.message()}")  # neither pass nor fail, and visible
        return verdict

    return gate


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
