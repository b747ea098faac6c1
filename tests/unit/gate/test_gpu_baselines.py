"""Baselines keyed by the exact GPU model, the versions that move speed, and the start condition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantgate import hardware
from quantgate.config.matrix import load_matrix
from quantgate.gate.baselines import Baseline, BaselineStore, NoiseModel, foreign_baselines, judge, version_changes
from quantgate.report.roofline import figures_for
from quantgate.stats import Figure
from quantgate.workload.grid import Cell, RequestResult, WorkloadResult, figures_from

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("name", "key"), [
    ("NVIDIA H200", "h200"), ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA GB10", "gb10"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtx-pro-6000"), ("NVIDIA L40S", "l40s"),
])
def test_gpu_model_key(name: str, key: str) -> None:
    assert hardware.gpu_model_key(name) == key


def test_baseline_key_names_the_gpu_model_and_cpus_keep_their_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTGATE_BASELINE_KEY", raising=False)
    assert hardware.baseline_key_for("sm90", "NVIDIA H200") == "sm90-h200"
    assert hardware.baseline_key_for("cpu-amx", None) == "cpu-amx"
    monkeypatch.setenv("QUANTGATE_HARDWARE", "sm90")
    monkeypatch.setenv("QUANTGATE_GPU_NAME", "NVIDIA H200")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no nvidia-smi query
    hw = hardware.detect()
    assert (hw.id, hw.marker, hw.baseline_key, hw.memory_bandwidth_gbps) == ("sm90", "sm90", "sm90-h200", 4800.0)
    monkeypatch.setenv("QUANTGATE_BASELINE_KEY", "sm90-h200-sxm")
    assert hardware.detect().baseline_key == "sm90-h200-sxm"


def test_speed_versions_are_read_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "fakevllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (pkg / "_version.py").write_text("__commit_id__: str | None\n\n__version__ = version = '0.26.0'\n\n"
                                     "__commit_id__ = commit_id = 'gffd46bfab'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hardware._module_constant("fakevllm", "_version.py", "__commit_id__") == "gffd46bfab"
    (pkg / "_version.py").write_text("__commit_id__: str | None\n__version__ = '1'\n__commit_id__ = None\n")
    assert hardware._module_constant("fakevllm", "_version.py", "__commit_id__") is None
    assert set(hardware.SPEED_DISTS) >= {"vllm", "torch", "triton", "flashinfer-python", "compressed-tensors"}


def _baseline(versions: dict[str, str], **env: str) -> Baseline:
    fig = Figure("decode_tps[ctx=0,out=long]", "tok/s", True, (100.0, 100.0, 100.0))
    return Baseline("a", "sm90-h200", {fig.name: fig.summary()}, environment={"versions": versions, **env})


def test_version_changes() -> None:
    base = _baseline({"vllm": "0.26.0", "vllm-commit": "gffd46bfab", "torch": "2.11.0", "quantgate": "0.1"})
    now = {"vllm": "0.27.0", "vllm-commit": "g1234", "torch": "2.11.0", "triton": "3.6.0", "quantgate": "0.2"}
    assert version_changes(base, now) == ["vllm 0.26.0 -> 0.27.0", "vllm-commit gffd46bfab -> g1234"]
    assert version_changes(None, now) == []


def test_a_failure_message_carries_its_notes() -> None:
    base = _baseline({"vllm": "0.26.0"})
    fig = Figure("decode_tps[ctx=0,out=long]", "tok/s", True, (90.0, 90.0, 90.0))
    v = judge("a", fig, base, NoiseModel({}, 0.03))
    assert v.outcome == "fail"
    from dataclasses import replace

    text = replace(v, notes=("versions changed since the baseline: vllm 0.26.0 -> 0.27.0",)).message()
    assert "regressed" in text and text.endswith("vllm 0.26.0 -> 0.27.0")


def test_another_gpu_models_baseline_is_found_and_never_used(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update("sm90-h100", "a", [Figure("decode_tps[ctx=0,out=long]", "tok/s", True, (1.0,))], None, {}, "r")
    assert store.load("sm90-h200", "a") is None
    assert foreign_baselines(tmp_path, "sm90", "sm90-h200", "a") == ["sm90-h100"]
    assert foreign_baselines(tmp_path, "sm90", "sm90-h100", "a") == []
    assert foreign_baselines(tmp_path, "sm90", "sm90-h200", "b") == []


def test_committed_baseline_folders_name_their_gpu() -> None:
    for folder in (REPO / "baselines").iterdir():
        if not folder.is_dir() or folder.name.startswith("cpu"):
            continue
        marker, _, model = folder.name.partition("-")
        assert marker in hardware.GPU_IDS and model, f"{folder.name}: GPU baselines are <marker>-<gpu model>"
        for path in folder.glob("*.json"):
            if path.name != "noise.json":
                assert json.loads(path.read_text())["hardware"] == folder.name, path


def test_decode_figures_carry_their_output_length_for_the_roofline(tmp_path: Path) -> None:
    """Regression: roofline.figures_for reads extra["max_tokens"]; nothing set it, so the KV read was the
    prompt's alone and out=short and out=long got the same ceiling."""
    cells = [Cell(4096, "short", 32), Cell(4096, "long", 4096)]
    result = WorkloadResult(requests=[
        RequestResult(cell=c.key, prompt_tokens=c.context, completion_tokens=c.max_tokens, client_ttft_s=0.1,
                      client_e2e_s=1.0, client_decode_s=0.9, chunks=c.max_tokens) for c in cells for _ in range(3)])
    figures = {f.name: f for f in figures_from(result, cells, "client", spec=False)}
    assert figures["decode_tps[ctx=4096,out=long]"].extra["max_tokens"] == 4096
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
        "head_dim": 128, "intermediate_size": 6144, "num_experts": 128, "num_experts_per_tok": 8,
        "moe_intermediate_size": 768, "vocab_size": 151936}))
    roof = {f.name: f for f in figures_for(tmp_path, "w4a16", 4800.0, figures)}
    short, long_ = (roof[f"roofline_ceiling_tps[ctx=4096,out={o}]"].median for o in ("short", "long"))
    assert long_ < short  # the long output reads ~2048 more context tokens of KV per step on average


def test_copies_make_fresh_engine_configs_judged_as_their_original(tmp_path: Path) -> None:
    out = tmp_path / "m.toml"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "copies.py"),
                    str(REPO / "fixtures" / "matrix" / "sm90.toml"), str(out), "--keep", "sm90-a3b-w4a16",
                    "sm90-a3b-w4a16:aa1,inj5=0.05"], check=True, capture_output=True)
    m = load_matrix(out)
    by_id = {c.id: c for c in m.configs}
    assert set(by_id) == {"sm90-a3b-w4a16", "sm90-a3b-w4a16--aa1", "sm90-a3b-w4a16--inj5"}
    assert by_id["sm90-a3b-w4a16--aa1"].baseline_of == "sm90-a3b-w4a16"
    assert by_id["sm90-a3b-w4a16--inj5"].env["QUANTGATE_INJECT_SLOWDOWN"] == "0.05"
    assert by_id["sm90-a3b-w4a16--aa1"].model == by_id["sm90-a3b-w4a16"].model
    assert m.workload == load_matrix(REPO / "fixtures" / "matrix" / "sm90.toml").workload
