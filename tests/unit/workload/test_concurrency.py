import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fake_openai import FakeServer  # noqa: E402
from quantgate.workload.concurrency import (  # noqa: E402
    LevelResult,
    StreamTiming,
    SweepSettings,
    _StreamClock,
    histogram_buckets,
    histogram_quantile,
    run_sweep,
    timed_stream,
)
from quantgate.workload.grid import NONCE_TOKENS, Client, WorkloadError  # noqa: E402


def _timing(ttft: float, gaps: list[float], tokens: int) -> StreamTiming:
    times = [ttft]
    for g in gaps:
        times.append(times[-1] + g)
    return StreamTiming(start=0.0, ttfr_s=ttft, ttft_s=ttft, e2e_s=times[-1], end_s=times[-1], content_times=times,
                        prompt_tokens=10, completion_tokens=tokens)


def test_tpot_and_itl_follow_vllm_bench_serve_definitions() -> None:
    # speculative decoding: 3 chunks of 2 tokens each 40 ms apart -> ITL 40 ms, TPOT (80 ms / 5) = 16 ms
    spec = _timing(0.1, [0.04, 0.04], tokens=6)
    assert spec.itls == pytest.approx([0.04, 0.04])
    assert spec.tpot_s == pytest.approx(0.08 / 5)
    one = _timing(0.1, [], tokens=1)
    assert math.isnan(one.tpot_s)  # no TPOT for a one-token request, as vLLM leaves it out
    level = LevelResult(concurrency=2, repeat=0, streams=[spec, one], duration_s=0.5)
    assert level.tpots == pytest.approx([0.016])  # the one-token request is not averaged in
    assert level.output_tps == pytest.approx(7 / 0.5)
    summary = level.summary()
    assert summary["median_itl_ms"] == pytest.approx(40.0)
    assert summary["p99_ttft_ms"] == pytest.approx(100.0)


def test_stream_timing_skips_empty_first_chunk_and_counts_ttfr() -> None:
    with FakeServer(tokens_per_s=400) as srv, Client(srv.url, "m", api_key="k") as client:
        srv.latency_s = 0.05
        t = timed_stream(client.http, "m", [1] * 20, 10)
    assert srv.requests[0]["auth"] == "Bearer k"
    assert t.completion_tokens == 10 and t.chunks == 10 and t.prompt_tokens == 20
    assert t.ttfr_s >= 0.05 and t.ttft_s > t.ttfr_s  # the empty chunk is the response, not the first token
    assert len(t.itls) == 9 and t.e2e_s <= t.end_s


ERRORS = [("500", "HTTP 500"), ("truncated", "without"), ("zero", "zero"), ("malformed", "malformed SSE")]


@pytest.mark.parametrize(("mode", "message"), ERRORS)
def test_stream_errors(mode: str, message: str) -> None:
    with FakeServer(mode=mode) as srv, Client(srv.url, "m") as client, pytest.raises(WorkloadError, match=message):
        timed_stream(client.http, "m", [1, 2, 3], 8)


@pytest.mark.parametrize(("mode", "message"), ERRORS)
def test_async_sweep_reader_raises_the_same_errors(mode: str, message: str) -> None:
    s = SweepSettings(levels=(2,), prompt_len=NONCE_TOKENS, output_len=8, requests_per_level=3, warmup=0)
    with FakeServer(mode=mode) as srv, Client(srv.url, "m", api_key="k") as client, \
            pytest.raises(WorkloadError, match=message):
        run_sweep(client, vocab_size=4096, settings=s)


def test_sweep_levels_concurrency_and_spec_chunks() -> None:
    s = SweepSettings(levels=(1, 4), prompt_len=NONCE_TOKENS + 8, output_len=12, requests_per_level=8, warmup=1)
    with FakeServer(tokens_per_s=300) as srv, Client(srv.url, "m") as client:
        srv.tokens_per_chunk = 3  # three tokens per chunk, like accepted drafts
        result = run_sweep(client, vocab_size=4096, settings=s)
    assert [lv.concurrency for lv in result.levels] == [1, 4]
    measured = [r for r in srv.requests if len(r["body"]["prompt"]) == NONCE_TOKENS + 8]
    firsts = {tuple(r["body"]["prompt"][:NONCE_TOKENS]) for r in measured}
    assert len(firsts) == len(measured)  # every prompt unique, warm-up included
    c1, c4 = result.levels
    assert all(st.completion_tokens == 12 and st.chunks == 4 for st in c1.streams + c4.streams)
    # four in flight: clearly more aggregate tok/s than one at a time (the fake sleeps per chunk)
    assert c4.output_tps > 2.0 * c1.output_tps
    # ITL (gap between 3-token chunks) is about three TPOTs
    assert 2.0 < c1.summary()["median_itl_ms"] / c1.summary()["median_tpot_ms"] < 4.5
    assert result.prefix_cache_hit_rate == 0.0 and not result.prefix_cache_suspect
    figs = {f.name: f for f in result.figures()}
    for name in ("output_tps[c=4]", "tpot_ms_p50[c=4]", "itl_ms_p99[c=4]", "ttft_ms_p50[c=1]"):
        assert name in figs and len(figs[name].samples) == 1
    assert figs["output_tps[c=1]"].higher_is_better and not figs["itl_ms_p99[c=4]"].higher_is_better
    assert len(figs["itl_ms_p50[c=4]"].extra["raw_ms"][0]) == 8 * 3
    assert figs["output_tps[c=4]"].extra["server"][0]["ttft_mean_s"] > 0


def test_sweep_flags_prefix_cache_hits() -> None:
    s = SweepSettings(levels=(2,), prompt_len=NONCE_TOKENS, output_len=4, requests_per_level=4, warmup=0)
    with FakeServer(tokens_per_s=2000) as srv, Client(srv.url, "m") as client:
        srv.hit_fraction = 0.5
        result = run_sweep(client, vocab_size=4096, settings=s)
    assert result.prefix_cache_hit_rate == pytest.approx(0.5) and result.prefix_cache_suspect
    assert "prefix-cache" in result.figures()[0].note


def test_histogram_quantile_over_window() -> None:
    before = 'vllm:x_bucket{le="0.1",model_name="m"} 1\nvllm:x_bucket{le="0.2",model_name="m"} 1\n' \
             'vllm:x_bucket{le="+Inf",model_name="m"} 1\nvllm:x_bucket{le="0.1",model_name="o"} 50\n'
    after = 'vllm:x_bucket{le="0.1",model_name="m"} 3\nvllm:x_bucket{le="0.2",model_name="m"} 5\n' \
            'vllm:x_bucket{le="+Inf",model_name="m"} 5\n'
    b, a = histogram_buckets(before, "vllm:x", "m"), histogram_buckets(after, "vllm:x", "m")
    assert a == {0.1: 3.0, 0.2: 5.0, math.inf: 5.0}
    # window: 2 in (0, 0.1], 2 in (0.1, 0.2]; median at the 0.1 boundary, p75 half-way through the second
    assert histogram_quantile(0.5, b, a) == pytest.approx(0.1)
    assert histogram_quantile(0.75, b, a) == pytest.approx(0.15)
    assert math.isnan(histogram_quantile(0.5, a, a))


def test_every_client_sends_the_same_request_body() -> None:
    """The grid's client, benchy/single streams and the asyncio sweep send one body, return_token_ids
    included (a copy in this module once lacked it: random MoE models whose tokens detokenize to "" then
    timed the wrong chunks)."""
    s = SweepSettings(levels=(1,), prompt_len=NONCE_TOKENS, output_len=4, requests_per_level=1, warmup=0)
    with FakeServer() as srv, Client(srv.url, "m") as client:
        prompt = list(range(300, 300 + NONCE_TOKENS))
        client.complete(prompt, 4)
        timed_stream(client.http, client.model, prompt, 4)
        run_sweep(client, 4096, s)
        bodies = [r["body"] for r in srv.requests]
    assert len(bodies) == 3 and all(b["return_token_ids"] is True for b in bodies)
    assert bodies[0] == bodies[1]
    assert {k: v for k, v in bodies[2].items() if k != "prompt"} == {k: v for k, v in bodies[0].items()
                                                                      if k != "prompt"}


def test_a_chunk_with_token_ids_and_no_text_is_a_token() -> None:
    clock = _StreamClock(start=0.0, max_tokens=3)
    clock.add(0.1, {"choices": [{"text": ""}]})  # empty first chunk: not a token
    clock.add(0.2, {"choices": [{"text": "", "token_ids": [7]}]})  # detokenizes to "": still a token
    clock.add(0.3, {"choices": [{"text": "a", "token_ids": [8]}]})
    clock.add(0.4, {"choices": [{"text": "", "token_ids": [9]}], "usage": {"prompt_tokens": 1,
                                                                             "completion_tokens": 3}})
    timing = clock.timing(0.5)
    assert timing.ttft_s == pytest.approx(0.2) and timing.content_times == pytest.approx([0.2, 0.3, 0.4])


@pytest.mark.fault("workload", "a sweep stream that trickles tokens forever", "WorkloadError at the request deadline")
def test_sweep_stream_ends_at_the_request_deadline() -> None:
    import time

    s = SweepSettings(levels=(2,), prompt_len=NONCE_TOKENS, output_len=64, requests_per_level=2, warmup=0)
    with FakeServer(tokens_per_s=5) as srv, Client(srv.url, "m", timeout_s=10, deadline_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(WorkloadError, match=r"still streaming after its deadline of 1 s .*request_deadline_s"):
            run_sweep(client, 4096, s, server_metrics=False)
        assert time.monotonic() - started < 8  # the 64 tokens would take 13 s
