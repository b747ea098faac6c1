"""Ctrl-C and SIGTERM: a run stopped early unwinds through session teardown (every engine stopped), never
loses the interrupt, and never lets syrupy treat the kernel tests it did not reach as unused."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import pytest

# Signals whose KeyboardInterrupt pytest has not seen yet. One raised while a finalizer runs (httpx closing a
# finished stream) is printed as "Exception ignored" and lost: a Ctrl-C in the warm-up of a real server let the
# whole measurement run on and exit 0. Raised again at the next checkpoint until pytest_keyboard_interrupt.
_PENDING_INTERRUPTS: list[int] = []
_INTERRUPT_SEEN: list[bool] = []  # pytest saw one: teardown (stopping engines, writing) runs undisturbed


def install_signal_handlers() -> None:
    """SIGTERM (a CI cancel) unwinds like Ctrl-C, so session teardown stops every engine; both are kept
    pending until pytest has seen them."""
    def handler(signum: int, frame: Any) -> None:
        _PENDING_INTERRUPTS.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, handler)


def deliver_lost_interrupt() -> None:
    """A checkpoint (a progress line, a test's teardown): raise again an interrupt pytest never saw."""
    if _PENDING_INTERRUPTS and not _INTERRUPT_SEEN:
        raise KeyboardInterrupt(f"signal {_PENDING_INTERRUPTS[-1]} (raised again: the first was lost)")


def pytest_keyboard_interrupt(excinfo: Any) -> None:
    _INTERRUPT_SEEN.append(True)


class KeepSnapshotsOfTestsNotRun:
    """A run stopped early (Ctrl-C, SIGTERM, -x) never ran some kernel tests: syrupy counts their snapshots as
    unused. In update mode it deleted them (seen: Ctrl-C during a refresh removed other configs' kernel
    snapshots); in a gate run it ORed its "unused" status 1 into pytest's 2, so a Ctrl-C exited 3, pytest's
    internal error. Before syrupy's own session finish, switch its unused-snapshot check off for such a run."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail:
            session.config.option.disable_unused_snapshots = True


def register_snapshot_guard(config: pytest.Config) -> None:
    if hasattr(config.option, "update_snapshots"):  # syrupy is loaded
        config.pluginmanager.register(KeepSnapshotsOfTestsNotRun(), "quantgate-keep-snapshots")
