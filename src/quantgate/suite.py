"""The regression suite's tests. A repo runs them on its own matrix with one line in a test module:

    from quantgate.suite import *  # noqa: F401,F403

The plugin parametrizes them from the matrix: one kernel-snapshot test per config and one test per gated
figure, each marked with its hardware (`pytest -m cpu`, `pytest -m sm121`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["test_kernel_selection", "test_figure"]


def test_kernel_selection(qg_config_id: str, qg_kernels: Any, qg_kernel_snapshot: Any, qg_explain: Any) -> None:
    """The engine's kernel choices (attention, GEMM, MoE, compile, CUDA graphs) match the snapshot; on a
    mismatch the message also gives what changed and what it cost (figures vs baseline)."""
    assert qg_kernels(qg_config_id) == qg_kernel_snapshot, qg_explain(qg_config_id)


def test_figure(qg_config_id: str, qg_figure: str, qg_gate: Any) -> None:
    """A measured figure is no worse than its baseline beyond the noise-derived tolerance."""
    qg_gate(qg_config_id, qg_figure)
