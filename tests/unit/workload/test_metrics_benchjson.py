"""/metrics through prometheus_client's parser, and figures in pytest-benchmark's JSON schema."""

from __future__ import annotations

import math
import statistics

import httpx
import pytest

from quantgate.report.benchjson import benchmark_entry, transform
from quantgate.stats import Figure
from quantgate.workload.concurrency import histogram_buckets
from quantgate.workload.grid import WorkloadError, checked_snapshot
from quantgate.workload.metrics import REQUIRED, MetricsError, parse_prometheus

BODY = """# HELP vllm:time_to_first_token_seconds TTFT
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 2
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 5
vllm:time_to_first_token_seconds_sum{model_name="m"} 1.5
vllm:time_to_first_token_seconds_count{model_name="m"} 5
vllm:time_to_first_token_seconds_created{model_name="m"} 1.7e9
vllm:request_decode_time_seconds_sum{model_name="m"} 3.0
vllm:request_decode_time_seconds_sum{model_name="other"} 999
vllm:request_prefill_time_seconds_sum{model_name="m"} 0.5
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{model_name="m"} 10
vllm:prefix_cache_queries_created{model_name="m"} 1.7e9
"""


def test_parse_sums_filters_model_and_keeps_buckets() -> None:
    snap = parse_prometheus(BODY, model_name="m")
    assert snap.get("vllm:request_decode_time_seconds_sum") == 3.0  # the other model's 999 left out
    assert snap.get("vllm:prefix_cache_queries") == 10  # with or without _total
    assert "vllm:time_to_first_token_seconds_created" not in snap.totals
    assert "vllm:time_to_first_token_seconds_bucket" not in snap.totals
    assert snap.buckets["vllm:time_to_first_token_seconds"] == {0.1: 2.0, math.inf: 5.0}
    assert histogram_buckets(BODY, "vllm:time_to_first_token_seconds", "m") == {0.1: 2.0, math.inf: 5.0}
    snap.require(REQUIRED, "m")


def _resp(text: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, text=text, request=httpx.Request("GET", "http://127.0.0.1:9/metrics"))


def test_a_body_without_an_expected_name_is_one_clear_error() -> None:
    body = BODY.replace("vllm:request_prefill_time_seconds_sum", "vllm:renamed_prefill_sum")
    with pytest.raises(WorkloadError) as err:
        checked_snapshot(_resp(body), "m")
    msg = str(err.value)
    assert "http://127.0.0.1:9/metrics" in msg and "vllm:request_prefill_time_seconds_sum" in msg
    assert "\n" not in msg


def test_a_wrong_served_model_name_says_which_names_the_server_has() -> None:
    with pytest.raises(WorkloadError, match=r"model_name='nope'.*labelled model_name=m, other"):
        checked_snapshot(_resp(BODY), "nope")


def test_a_body_that_is_not_prometheus_text() -> None:
    with pytest.raises(MetricsError, match="not Prometheus text.*it begins '<html>"):
        parse_prometheus("<html>\n<body>hello world</body>\n")
    with pytest.raises(WorkloadError, match="HTTP 404"):
        checked_snapshot(_resp("nope", 404), "m")


def test_benchmark_entry_stats_come_from_the_raw_samples() -> None:
    tps = Figure("decode_tps[ctx=0,out=long]", "tok/s", True, (10.0, 20.0, 40.0, 25.0), "server")
    entry = benchmark_entry("w8a8", tps)
    assert entry is not None
    stats = entry["stats"]
    data = [1 / s for s in tps.samples]
    assert stats["data"] == data and stats["rounds"] == 4 and stats["iterations"] == 1
    assert stats["min"] == min(data) and stats["max"] == max(data)
    assert stats["mean"] == pytest.approx(statistics.mean(data))
    assert stats["median"] == pytest.approx(statistics.median(data))
    assert stats["stddev"] == pytest.approx(statistics.stdev(data))
    assert {"q1", "q3", "iqr", "ops", "outliers", "total", "ld15iqr", "hd15iqr"} <= set(stats)
    assert stats["ops"] == pytest.approx(statistics.harmonic_mean(tps.samples))
    assert entry["extra_info"]["value"] == tps.value == 22.5
    assert entry["group"] == "w8a8" and entry["fullname"] == "quantgate::w8a8::decode_tps[ctx=0,out=long]"


def test_transform_keeps_lower_is_better_for_every_figure_kind() -> None:
    ttft = Figure("ttft_ms[ctx=0,out=long]", "ms", False, (50.0, 70.0))
    assert transform(ttft) == ("x / 1000 (seconds)", [0.05, 0.07])
    acc = Figure("math_accuracy", "fraction", True, (1.0, 0.0, 1.0, 1.0))
    how, data = transform(acc) or ("", [])
    assert how.startswith("1 - x") and statistics.mean(data) == 0.25
    assert transform(Figure("x", "tok/s", True, (0.0, 3.0))) is None  # no reciprocal of zero
    assert transform(Figure("x", "tok/s", True, (math.nan,))) is None
