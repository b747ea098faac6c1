"""The pytest layer over quantgate.session: the `quantgate` plugin (entry point pytest11).

pytest registers this package as one plugin, so every hook and fixture is named here: hooks.py (options,
collection, the run's start and end, the summary), fixtures.py (what the suite's tests use), xdist.py
(pytest-xdist's hooks), interrupts.py (Ctrl-C and SIGTERM) and state.py (per-session state).
"""

from .fixtures import qg_config_id, qg_explain, qg_figure, qg_gate, qg_kernel_snapshot, qg_kernels, qg_run
from .hooks import (
    pytest_addoption,
    pytest_benchmark_update_json,
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_runtest_makereport,
    pytest_runtest_teardown,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
    pytest_unconfigure,
    pytest_xdist_node_collection_finished,
)
from .interrupts import pytest_keyboard_interrupt
from .xdist import pytest_configure_node, pytest_runtest_logreport, pytest_testnodedown, pytest_xdist_make_scheduler

__all__ = [
    "qg_config_id", "qg_figure", "qg_run", "qg_gate", "qg_kernels", "qg_explain", "qg_kernel_snapshot",
    "pytest_addoption", "pytest_configure", "pytest_sessionstart", "pytest_generate_tests",
    "pytest_collection_modifyitems", "pytest_collection_finish", "pytest_xdist_node_collection_finished",
    "pytest_runtest_makereport", "pytest_runtest_teardown", "pytest_sessionfinish", "pytest_benchmark_update_json",
    "pytest_unconfigure", "pytest_terminal_summary", "pytest_configure_node", "pytest_xdist_make_scheduler",
    "pytest_keyboard_interrupt", "pytest_runtest_logreport", "pytest_testnodedown",
]
