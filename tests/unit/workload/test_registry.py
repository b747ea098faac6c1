"""quantgate.workload.registry: every workload a matrix may name is one entry behind the Workload protocol, and
the session's gated figures are the workloads' own."""

from __future__ import annotations

from pathlib import Path

from quantgate.config.matrix import WORKLOADS, load_matrix
from quantgate.engine.figures import ENGINE_FIGURES
from quantgate.session import gated_figure_names
from quantgate.workload.registry import WORKLOADS as REGISTRY
from quantgate.workload.registry import workloads_of


def test_every_matrix_workload_has_one_registered_workload() -> None:
    assert list(REGISTRY) == list(WORKLOADS)
    assert all(w.name == name for name, w in REGISTRY.items())


def _matrix(tmp_path: Path, mode: str, workloads: str) -> Path:
    gate = ('[gate]\nmode = "relative"\nreference = "ref"\n' if mode == "relative"
            else '[gate]\nmode = "absolute"\nengine_figures = true\n')
    (tmp_path / "m.toml").write_text(
        f'{gate}[defaults]\nhardware = ["cpu"]\nmodel = "/m"\nworkloads = {workloads}\n'
        '[workload]\noutputs = { short = 8 }\ncontexts = [0, 256]\n'
        '[benchy]\npp = [64]\ntg = [8]\ndepths = [0]\n[concurrency]\nlevels = [1, 2]\n'
        '[[config]]\nid = "ref"\n[[config]]\nid = "w8"\nspeculative = { method = "ngram", '
        'num_speculative_tokens = 2 }\n')
    return tmp_path / "m.toml"


def test_gated_figures_come_from_the_named_workloads_in_registry_order(tmp_path: Path) -> None:
    matrix = load_matrix(_matrix(tmp_path, "absolute", '["accuracy", "concurrency", "benchy", "grid"]'))
    cfg = matrix.get("w8")
    assert [w.name for w in workloads_of(cfg)] == ["grid", "benchy", "concurrency", "accuracy"]
    assert gated_figure_names(cfg, matrix) == [
        "decode_tps[ctx=0,out=short]", "decode_tps[ctx=256,out=short]", "acceptance_length",
        "pp_tps[pp=64,depth=0]", "tg_tps[tg=8,depth=0]", "output_tps[c=1]", "output_tps[c=2]",
        "math_accuracy", *ENGINE_FIGURES]


def test_a_relative_gate_gates_ratios_and_accuracy_only(tmp_path: Path) -> None:
    matrix = load_matrix(_matrix(tmp_path, "relative", '["grid", "benchy", "concurrency", "accuracy"]'))
    assert gated_figure_names(matrix.get("ref"), matrix) == ["math_accuracy"]
    assert gated_figure_names(matrix.get("w8"), matrix) == [
        "rel_decode_tps[ctx=0,out=short]", "rel_decode_tps[ctx=256,out=short]", "acceptance_length",
        "math_accuracy"]
