import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fake_openai import FakeServer  # noqa: E402
from quantgate.workload.benchy import BenchySettings, run_benchy  # noqa: E402
from quantgate.workload.grid import NONCE_TOKENS, Client  # noqa: E402


def test_cells_are_capped_by_max_model_len() -> None:
    s = BenchySettings(pp=(512, 2048, 8192), tg=(32, 128), depths=(0, 1024), max_model_len=2048)
    assert s.pp_cells() == [(512, 0), (512, 1024)]
    assert s.tg_cells() == [(32, 0), (128, 0), (32, 1024), (128, 1024)]
    assert BenchySettings(max_model_len=16384).pp_cells() == [(512, 0), (2048, 0), (8192, 0)]


def test_pp_tg_ttfr_and_estimated_prompt_time() -> None:
    s = BenchySettings(pp=(64, 256), tg=(8,), depths=(0, 32), repeats=2, warmup=1, latency_probes=3,
                       max_model_len=4096)
    with FakeServer(tokens_per_s=200) as srv, Client(srv.url, "m") as client:
        srv.latency_s = 0.02  # fixed API latency
        srv.prefill_tps = 5000.0  # 256 tokens: ~51 ms of prompt processing
        result = run_benchy(client, vocab_size=4096, settings=s)
    assert 0.015 < result.latency_s < 0.06
    # every prompt is unique and exactly depth + pp tokens long
    measured = [r["body"] for r in srv.requests[-len(result.runs):]]
    firsts = [tuple(r["body"]["prompt"][:NONCE_TOKENS]) for r in srv.requests]
    assert len(set(firsts)) == len(firsts)  # warm-up and latency probes included
    pp_lens = sorted({len(b["prompt"]) for b in measured if b["max_tokens"] == s.pp_gen_tokens})
    assert pp_lens == [64, 96, 256, 288]
    figs = {f.name: f for f in result.figures()}
    for name in ("pp_tps[pp=256,depth=0]", "pp_tps[pp=64,depth=32]", "tg_tps[tg=8,depth=0]",
                 "ttft_ms[pp=256,depth=0]", "ttfr_ms[pp=256,depth=0]", "est_ppt_ms[pp=256,depth=0]",
                 "tg_tps_server[tg=8,depth=32]", "pp_tps_server[pp=256,depth=0]"):
        assert name in figs and len(figs[name].samples) == 2, name
    pp = figs["pp_tps[pp=256,depth=0]"]
    assert pp.gated and pp.source == "client" and pp.unit == "tok/s"
    assert 2000 < pp.median < 12000  # 5000 tok/s scripted; latency subtracted; shared 2-core box
    ppt = figs["est_ppt_ms[pp=256,depth=0]"].median
    assert 30 < ppt < 120  # ~51 ms scripted
    assert figs["ttft_ms[pp=256,depth=0]"].median > figs["ttfr_ms[pp=256,depth=0]"].median
    assert 80 < figs["tg_tps[tg=8,depth=0]"].median < 260  # 200 tok/s scripted
    assert result.prefix_cache_hit_rate == 0.0 and not result.prefix_cache_suspect
    assert len(pp.extra["runs"]) == 2


def test_prefix_cache_hits_are_flagged_and_ungate_pp() -> None:
    s = BenchySettings(pp=(32,), tg=(4,), repeats=1, warmup=0, latency_mode="none", max_model_len=512)
    with FakeServer(tokens_per_s=2000) as srv, Client(srv.url, "m") as client:
        srv.hit_fraction = 0.3
        result = run_benchy(client, vocab_size=4096, settings=s)
    assert result.latency_s == 0.0 and result.prefix_cache_hit_rate == pytest.approx(0.3)
    assert result.prefix_cache_suspect
    pp = next(f for f in result.figures() if f.name == "pp_tps[pp=32,depth=0]")
    assert not pp.gated and "prefix-cache hit rate 30.0%" in pp.note


def test_server_record_source_and_bad_settings() -> None:
    s = BenchySettings(pp=(32,), tg=(4,), repeats=1, warmup=0, latency_mode="none", max_model_len=512)
    with FakeServer(tokens_per_s=1000) as srv, Client(srv.url, "m") as client:
        result = run_benchy(client, vocab_size=4096, settings=s)
        with pytest.raises(ValueError, match="latency_mode"):
            run_benchy(client, 4096, BenchySettings(latency_mode="api"))
    figs = {f.name: f for f in result.figures(record_source="server")}
    assert figs["tg_tps[tg=4,depth=0]"].source == "server" and "tg_tps_client[tg=4,depth=0]" in figs
