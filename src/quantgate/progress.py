"""Progress on screen: one line per config (model, engine start with elapsed seconds, warm-up, cell k of n with
the last tok/s, verdicts) while a run works, so minutes of engine start and measurement are not a silent screen.

Two implementations of one protocol: `RichProgress` redraws each config's line in place on a terminal;
`PlainProgress` writes each stage as its own line, for a CI log (not a TTY). Both write in blocks between
`Output.open()` and `Output.close()`: under pytest the plugin's Output ends pytest's progress line before a
block and makes pytest start a fresh one after it, so no stage text lands in the middle of pytest's line of
dots, and no dot is left alone on a line.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text


class Progress(Protocol):
    def stage(self, config_id: str, text: str, *, since: float | None = None) -> None:
        """The config is now at this stage; `since` (time.monotonic()) shows the seconds it has lasted."""

    def tick(self, config_id: str) -> None:
        """Called while a stage lasts (an engine start polls its health): show the elapsed seconds."""

    def verdict(self, config_id: str, outcome: str) -> None:
        """One more gated figure or kernel check of the config came out as `outcome` (pass, fail, ...)."""

    def finish(self, config_id: str) -> None:
        """The config is done (engine stopped): its line shows its final state and verdict counts."""

    def message(self, text: str) -> None:
        """A line that belongs to no config's stage (a warning, a prestart note)."""

    def pause(self) -> None:
        """Someone else (pytest) writes next: end the current block."""


def _nothing() -> None:
    return None


@dataclass
class Output:
    """Where progress goes. `open` runs before a block of progress output, `close` after it (the pytest plugin
    uses them to step out of pytest's output capture and progress line); both default to doing nothing."""

    stream: TextIO
    open: Callable[[], None] = _nothing
    close: Callable[[], None] = _nothing


@dataclass
class _State:
    stage: str = ""
    since: float | None = None
    ticked: float = 0.0  # plain: the elapsed seconds last written
    verdicts: Counter[str] = field(default_factory=Counter)
    done: bool = False

    def counts(self) -> str:
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.verdicts.items()))


def _line(config_id: str, state: _State, now: float) -> str:
    parts = [state.stage]
    if state.since is not None and not state.done:
        parts[0] += f" {now - state.since:.0f} s"
    if state.counts():
        parts.append(state.counts())
    return f"quantgate {config_id:<14} " + " · ".join(p for p in parts if p)


class _Blocks:
    """The open/close bookkeeping both implementations share."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.states: dict[str, _State] = {}
        self.in_block = False

    def state(self, config_id: str) -> _State:
        return self.states.setdefault(config_id, _State())

    def begin(self) -> None:
        if not self.in_block:
            self.output.open()
            self.in_block = True

    def end(self) -> None:
        if self.in_block:
            self.in_block = False
            self.output.close()


class PlainProgress(_Blocks):
    """A line per stage, for logs: nothing is redrawn, and verdicts go into the config's closing line only
    (one line per figure would double pytest's own output)."""

    def __init__(self, output: Output | None = None, *, every_s: float = 30.0) -> None:
        super().__init__(output or Output(sys.stdout))
        self.every_s = every_s

    def _write(self, text: str) -> None:
        self.begin()
        self.output.stream.write(text + "\n")
        self.output.stream.flush()

    def stage(self, config_id: str, text: str, *, since: float | None = None) -> None:
        st = self.state(config_id)
        st.stage, st.since, st.done, st.ticked = text, since, False, 0.0
        self._write(f"quantgate {config_id:<14} {text}")

    def tick(self, config_id: str) -> None:
        st = self.state(config_id)
        if st.since is None or st.done:
            return
        elapsed = time.monotonic() - st.since
        if elapsed - st.ticked >= self.every_s:  # a log line now and then, so a CI log shows it is alive
            st.ticked = elapsed
            self._write(f"quantgate {config_id:<14} {st.stage} ({elapsed:.0f} s)")

    def verdict(self, config_id: str, outcome: str) -> None:
        self.state(config_id).verdicts[outcome] += 1

    def finish(self, config_id: str) -> None:
        st = self.state(config_id)
        if st.done:
            return
        st.done = True
        self._write(f"quantgate {config_id:<14} done" + (f": {st.counts()}" if st.verdicts else ""))

    def message(self, text: str) -> None:
        self._write(text)

    def pause(self) -> None:
        self.end()


class MessagesOnly(PlainProgress):
    """QUANTGATE_PROGRESS=off: no stage lines, but the messages still print (the budget probe's verdict, a
    missing-baselines stop): they say why a config failed or was skipped, which no stage line does."""

    def stage(self, config_id: str, text: str, *, since: float | None = None) -> None:
        return None

    def tick(self, config_id: str) -> None:
        return None

    def finish(self, config_id: str) -> None:
        return None


class RichProgress(_Blocks):
    """Each config's line redrawn in place with rich (elapsed seconds tick while an engine starts). A block's
    lines stay on screen in their last state when it ends; the config's closing line gives its verdicts.
    Redrawn from the caller's thread only (stages and ticks), no refresh thread: under pytest every write
    steps out of output capture and back, which a second thread could leave in the wrong state."""

    def __init__(self, output: Output | None = None, *, force_terminal: bool | None = None,
                 width: int | None = None) -> None:
        super().__init__(output or Output(sys.stdout))
        self.console = Console(file=self.output.stream, force_terminal=force_terminal, highlight=False,
                               width=width)
        self._live: Live | None = None
        self._shown: list[str] = []  # configs drawn in the current block, in order

    def _render(self) -> RenderableType:
        now = time.monotonic()
        lines = []
        for cid in self._shown:
            st = self.states[cid]
            style = "green" if st.done and not st.verdicts.get("fail") else "red" if st.verdicts.get("fail") else ""
            lines.append(Text(_line(cid, st, now), style=style, no_wrap=True, overflow="ellipsis"))
        return Text("\n").join(lines)

    def _show(self, config_id: str) -> None:
        self.begin()
        if config_id not in self._shown:
            self._shown.append(config_id)
        if self._live is None:
            live = Live(self._render(), console=self.console, auto_refresh=False, transient=False,
                        redirect_stdout=False, redirect_stderr=False, get_renderable=self._render)
            live.start()
            self._live = live
        self._live.refresh()  # every stage is drawn at least once, however quickly the next one comes

    def stage(self, config_id: str, text: str, *, since: float | None = None) -> None:
        st = self.state(config_id)
        st.stage, st.since, st.done = text, since, False
        self._show(config_id)

    def tick(self, config_id: str) -> None:
        if self._live is not None and config_id in self._shown:
            self._live.refresh()

    def verdict(self, config_id: str, outcome: str) -> None:
        self.state(config_id).verdicts[outcome] += 1  # drawn with the config's next stage or its finish

    def finish(self, config_id: str) -> None:
        st = self.state(config_id)
        if st.done:
            return
        st.done, st.stage = True, "done"
        self._show(config_id)

    def message(self, text: str) -> None:
        self._stop_live()
        self.begin()
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # a log path stays whole

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()  # leaves the lines in their last state
            self._live = None
        self._shown = []

    def pause(self) -> None:
        self._stop_live()
        self.end()


class NullProgress:
    """No output (pytest-xdist workers: their stdout reaches no screen)."""

    def stage(self, config_id: str, text: str, *, since: float | None = None) -> None:
        return None

    def tick(self, config_id: str) -> None:
        return None

    def verdict(self, config_id: str, outcome: str) -> None:
        return None

    def finish(self, config_id: str) -> None:
        return None

    def message(self, text: str) -> None:
        return None

    def pause(self) -> None:
        return None


def for_stream(output: Output, *, terminal: bool) -> Progress:
    """Rich on a terminal, plain lines otherwise (a CI log, a pipe)."""
    return RichProgress(output) if terminal else PlainProgress(output)
