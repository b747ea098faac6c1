import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fake_openai import FakeServer  # noqa: E402
from quantgate.config.matrix import WorkloadSettings  # noqa: E402
from quantgate.workload.grid import NONCE_TOKENS, Client, PromptMaker, WorkloadError, figures_from, grid, run_grid  # noqa: E402
from quantgate.workload.metrics import parse_prometheus, spec_decode_window  # noqa: E402


def test_grid_respects_max_model_len() -> None:
    s = WorkloadSettings(outputs={"short": 32, "long": 256}, contexts=(0, 512, 2048))
    keys = [c.key for c in grid(s, 2048)]
    assert keys == ["ctx=0,out=short", "ctx=0,out=long", "ctx=512,out=short", "ctx=512,out=long"]


def test_prompts_are_unique_and_warmup_shares_no_first_block() -> None:
    measure, warm = PromptMaker(4096, 42), PromptMaker(4096, 4242)
    firsts = [tuple(measure.make(8)[:NONCE_TOKENS]) for _ in range(50)]
    warm_firsts = {tuple(warm.make(8)[:NONCE_TOKENS]) for _ in range(10)}
    assert len(set(firsts)) == 50 and not warm_firsts & set(firsts)
    assert len(measure.make(512)) == NONCE_TOKENS + 512
    assert PromptMaker(4096, 42).make(4) == PromptMaker(4096, 42).make(4)  # reproducible across runs


def test_client_times_stream_and_uses_api_key() -> None:
    with FakeServer(tokens_per_s=500) as srv, Client(srv.url, "m", api_key="sekret") as client:
        r = client.complete([1, 2, 3], 20)
    assert r.completion_tokens == 20 and r.prompt_tokens == 3 and r.chunks == 20
    assert srv.requests[0]["auth"] == "Bearer sekret"
    body = srv.requests[0]["body"]
    assert body["temperature"] == 0 and body["seed"] == 42 and body["ignore_eos"] is True
    # 19 intervals at 2 ms: about 500 tok/s; generous bounds, this is a shared 2-core box
    assert 100 < r.client_decode_tps < 600
    assert r.client_ttft_s < r.client_e2e_s


@pytest.mark.fault(
    "server answers",
    "HTTP 500, HTTP 429, truncated stream, malformed SSE, zero tokens, usage missing",
    "WorkloadError naming what was wrong; the config's figure tests fail with it",
)
@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("500", "HTTP 500"),
        ("429", "HTTP 429"),
        ("truncated", r"without \[DONE\]"),
        ("malformed", "malformed SSE"),
        ("zero", "zero tokens"),
        ("no-usage", "no usage block"),
    ],
)
def test_client_rejects_bad_answers(mode: str, message: str) -> None:
    with FakeServer(mode=mode) as srv, Client(srv.url, "m") as client, pytest.raises(WorkloadError, match=message):
        client.complete([1, 2, 3], 8)


@pytest.mark.fault("server answers", "a stream that stalls", "per-request timeout (request_timeout_s) raises")
def test_stalled_stream_times_out() -> None:
    import httpx

    with FakeServer(mode="stall") as srv, Client(srv.url, "m", timeout_s=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.complete([1, 2, 3], 8)


def test_grid_run_gives_server_and_client_figures() -> None:
    s = WorkloadSettings(outputs={"short": 4, "long": 12}, contexts=(0, 300), repeats=2, warmup=1)
    with FakeServer(tokens_per_s=2000) as srv, Client(srv.url, "m") as client:
        cells = grid(s, 2048)
        result = run_grid(client, s, cells, vocab_size=4096)
    assert result.warmup_requests == 2 and len(result.requests) == 8
    assert all(r.server_decode_s and r.server_decode_s > 0 for r in result.requests)
    figs = {f.name: f for f in figures_from(result, cells, "server", spec=False)}
    dec = figs["decode_tps[ctx=0,out=long]"]
    assert dec.gated and dec.source == "server" and len(dec.samples) == 2
    assert not figs["decode_tps_client[ctx=0,out=long]"].gated
    assert "prefill_tps[ctx=300]" in figs and "prefill_tps[ctx=0]" not in figs
    assert result.prefix_cache_hit_rate == 0.0


def test_prometheus_parse_filters_model_and_spec_window() -> None:
    before = parse_prometheus(
        'vllm:spec_decode_num_drafts_total{model_name="a"} 10\n'
        'vllm:spec_decode_num_draft_tokens_total{model_name="a"} 30\n'
        'vllm:spec_decode_num_accepted_tokens_total{model_name="a"} 15\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="a",position="0"} 8\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="a",position="1"} 7\n'
        'vllm:spec_decode_num_drafts_total{model_name="b"} 1000\n', model_name="a")
    after = parse_prometheus(
        'vllm:spec_decode_num_drafts_total{model_name="a"} 20\n'
        'vllm:spec_decode_num_draft_tokens_total{model_name="a"} 60\n'
        'vllm:spec_decode_num_accepted_tokens_total{model_name="a"} 35\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="a",position="0"} 18\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="a",position="1"} 17\n', model_name="a")
    w = spec_decode_window(before, after)
    assert w.drafts == 10 and w.mean_acceptance_length == 3.0
    assert w.per_position_rates == (1.0, 1.0)
    assert math.isclose(w.draft_acceptance_rate, 20 / 30)



def test_cpu_figures_of_record_are_timed_by_the_server_in_either_mode(tmp_path: Path) -> None:
    # a starved client on 2 cores read 73,140 tok/s for a request the server timed at 438 (absolute mode, CPU)
    from quantgate.config.matrix import load_matrix
    from quantgate.session import record_source

    def matrix(mode: str):  # type: ignore[no-untyped-def]
        gate = '[gate]\nmode = "relative"\nreference = "a"\n' if mode == "relative" else '[gate]\nmode = "absolute"\n'
        (tmp_path / "m.toml").write_text(gate + '[[config]]\nid = "a"\nhardware = ["cpu"]\nmodel = { path = "/m" }\n')
        return load_matrix(tmp_path / "m.toml")

    assert record_source(matrix("absolute"), is_gpu=False) == "server"
    assert record_source(matrix("relative"), is_gpu=False) == "server"
    assert record_source(matrix("relative"), is_gpu=True) == "server"
    assert record_source(matrix("absolute"), is_gpu=True) == "client"
