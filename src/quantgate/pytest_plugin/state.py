"""Per-session state of the pytest layer (created lazily), and the progress screen inside pytest's output."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO, cast

import pytest

from ..config.environment import from_env
from ..config.matrix import (
    MatrixError,
    check_serve_args,
    load_matrices,
    matrix_files,
)
from ..engine.launch import from_env as launcher_from_env
from ..gate.baselines import Verdict
from ..hardware import Hardware, detect
from ..progress import MessagesOnly, NullProgress, Output, PlainProgress, Progress, RichProgress
from ..session import Run, Settings, new_run_id
from .interrupts import deliver_lost_interrupt

STATE_KEY = pytest.StashKey["QuantgateState"]()


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
        deliver_lost_interrupt()  # every progress line (a cell measured, a warm-up begun) is a checkpoint
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
    choice = from_env().progress
    if tr is None or hasattr(config, "workerinput"):
        return NullProgress()  # an xdist worker's output reaches no screen
    terminal = choice == "rich" or (choice not in ("plain", "off") and bool(getattr(tr, "isatty", False)))
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
    if choice == "off":
        return MessagesOnly(output)
    return RichProgress(output, force_terminal=True, width=tr._tw.fullwidth) if terminal else PlainProgress(output)


def _state(config: pytest.Config) -> QuantgateState:
    return config.stash[STATE_KEY]


def _write_failed(state: QuantgateState, path: Path | str, exc: BaseException, config_id: str | None = None) -> None:
    line = f"{path}: not written: {type(exc).__name__}: {exc}"
    state.write_failures.append(line)
    if state._run is not None:
        state.run.log(f"quantgate: {line}")
    if config_id is not None:  # its figures were reported UPDATED when measured: they were not
        state.verdicts = [replace(v, outcome="unwritten") if v.config_id == config_id and v.outcome == "updated"
                          else v for v in state.verdicts]
