"""quantgate.gate.validity: each check flags the measurement it guards, and passes a sound one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fake_openai import FakeServer  # noqa: E402
from quantgate.config.matrix import WorkloadSettings  # noqa: E402
from quantgate.gate import validity  # noqa: E402
from quantgate.gate.baselines import Verdict  # noqa: E402
from quantgate.gate.validity import (  # noqa: E402
    Check,
    MeasureWatch,
    Validity,
    check_bursts,
    check_client_cpu,
    check_engine,
    check_jit,
    check_prefix_cache,
    check_tokens,
)
from quantgate.stats import Figure  # noqa: E402
from quantgate.workload.grid import Cell, Client, RequestResult, WorkloadResult, run_grid  # noqa: E402
from quantgate.workload.metrics import parse_prometheus  # noqa: E402

JIT = ("(EngineCore pid=8) WARNING 12-02 10:00:01 [jit_monitor.py:140] Triton kernel JIT compilation during "
       "inference: _topk_forward. This causes a latency spike; consider extending warmup to cover this shape/config.")


def request(cell: str = "ctx=0,out=long", tokens: int = 32, client_decode_s: float = 0.07,
            server_decode_s: float | None = 0.07) -> RequestResult:
    return RequestResult(cell, 16, tokens, 0.01, 0.1, client_decode_s, tokens, server_decode_s=server_decode_s)


def test_tokens_flags_a_request_ended_early() -> None:
    asked = {"ctx=0,out=long": 32}
    assert check_tokens([request(), request()], asked).ok
    short = check_tokens([request(), request(tokens=8)], asked)
    assert not short.ok and "1/2 measured requests" in short.detail and "8 of 32" in short.detail


def test_prefix_cache_flags_a_hit_rate_above_about_zero() -> None:
    assert check_prefix_cache(0.0).ok and check_prefix_cache(None).ok and check_prefix_cache(0.005).ok
    hit = check_prefix_cache(0.25)
    assert not hit.ok and "25.0%" in hit.detail


def test_client_cpu_flags_a_saturated_client() -> None:
    assert check_client_cpu(4.0, 10.0).ok and check_client_cpu(0.1, 0.1).ok  # too short to judge
    busy = check_client_cpu(9.5, 10.0)
    assert not busy.ok and "95%" in busy.detail


def test_bursts_flag_gated_client_figures_only() -> None:
    # the CI run that read 80,367 tok/s: 31 tokens in 0.4 ms by the client's clock, 69 ms by the server's
    burst = request(client_decode_s=0.000386, server_decode_s=0.069)
    assert burst.burst
    assert check_bursts([request(), request()], {"ctx=0,out=long"}).ok
    flagged = check_bursts([request(), burst], {"ctx=0,out=long"})
    assert not flagged.ok and "1/2 client streams" in flagged.detail and "80,311 tok/s" in flagged.detail
    assert check_bursts([burst], set()).ok  # the client figure is not gated (the server's is of record)


def test_gated_client_cells_follow_the_figure_of_record() -> None:
    cells = [Cell(0, "long", 32), Cell(0, "short", 8)]
    figures = {"decode_tps[ctx=0,out=long]": Figure("decode_tps[ctx=0,out=long]", "tok/s", True, (1.0,), "client"),
               "decode_tps[ctx=0,out=short]": Figure("decode_tps[ctx=0,out=short]", "tok/s", True, (1.0,), "server")}
    assert validity.gated_client_cells(cells, figures) == {"ctx=0,out=long"}


def test_jit_flags_a_compile_logged_during_measurement() -> None:
    assert check_jit("INFO all fine\n").ok and check_jit(None).ok
    late = check_jit(f"INFO x\n{JIT}\n{JIT}\n")
    assert not late.ok and "_topk_forward during measurement" in late.detail
    assert validity.jit_names("CuTeDSL JIT compilation during inference: fmha_fwd. This causes") == ["fmha_fwd"]


def test_engine_flags_a_restart() -> None:
    assert check_engine(True, 100.0, 100.0).ok and check_engine(True, None, None).ok
    assert not check_engine(False, None, None).ok
    moved = check_engine(True, 100.0, 160.0)
    assert not moved.ok and "restarted" in moved.detail


def test_validity_reason_and_round_trip() -> None:
    v = Validity((Check("tokens", True), Check("jit", False, "compiled x")))
    assert not v.valid and v.reason == "compiled x"
    assert Validity.from_dict(v.to_dict()) == v and Validity.from_dict(None).valid
    ref = Validity((Check("tokens", True),)).combined(v, "reference 'ref': ")
    assert not ref.valid and ref.reason == "reference 'ref': compiled x"


def test_report_lines_name_each_invalid_config_once() -> None:
    v = Verdict("w4", "decode_tps[ctx=0,out=long]", "tok/s", "invalid", 450.0, notes=("prefix-cache hit 20%",))
    lines = validity.report_lines([v, v, Verdict("ref", "x", "tok/s", "pass", 1.0)])
    assert lines == ["INVALID: w4: prefix-cache hit 20%"]


def _metrics(start: float) -> str:
    return f'process_start_time_seconds {start}\nvllm:prefix_cache_queries_total{{model_name="m"}} 0\n'


def test_watch_reads_only_the_log_written_during_measurement(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(f"INFO start\n{JIT}\n")  # compiled during start-up or warm-up: not measurement's
    watch = MeasureWatch(log, alive=lambda: True, metrics=lambda: parse_prometheus(_metrics(100.0)))
    watch.measuring()
    with log.open("a") as fh:
        fh.write("INFO a request\n")
    watch.stop()
    with log.open("a") as fh:
        fh.write(JIT + "\n")  # after the window
    assert all(c.ok for c in watch.checks())

    watch = MeasureWatch(log, alive=lambda: True)
    watch.measuring()
    with log.open("a") as fh:
        fh.write(JIT.replace("_topk_forward", "_sum_bitmatrix_rows") + "\n")
    watch.stop()
    jit = {c.name: c for c in watch.checks()}["jit"]
    assert not jit.ok and "_sum_bitmatrix_rows" in jit.detail and "_topk_forward" not in jit.detail


def test_watch_sees_a_restart_and_a_busy_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starts = iter([100.0, 160.0])
    watch = MeasureWatch(None, alive=lambda: True, metrics=lambda: parse_prometheus(_metrics(next(starts))))
    clock = iter([10.0, 19.5])
    monkeypatch.setattr(validity.time, "process_time", lambda: next(clock))
    walls = iter([0.0, 10.0])
    monkeypatch.setattr(validity.time, "perf_counter", lambda: next(walls))
    watch.measuring()
    watch.stop()
    checks = {c.name: c for c in watch.checks()}
    assert not checks["engine"].ok and "100 -> 160" in checks["engine"].detail
    assert not checks["client_cpu"].ok and "95%" in checks["client_cpu"].detail


def test_assess_runs_every_check() -> None:
    cells = [Cell(0, "long", 32)]
    figures = {"decode_tps[ctx=0,out=long]": Figure("decode_tps[ctx=0,out=long]", "tok/s", True, (1.0,), "client")}
    good = validity.assess(WorkloadResult([request()], prefix_cache_hit_rate=0.0), cells, figures, None)
    assert good.valid and {c.name for c in good.checks} == {"tokens", "prefix_cache", "burst"}
    bad = validity.assess(WorkloadResult([request(tokens=5)], prefix_cache_hit_rate=0.5), cells, figures, None)
    assert [c.name for c in bad.checks if not c.ok] == ["tokens", "prefix_cache"]


class LateCompiles:
    """A watch whose engine compiled a kernel during the first warm-up round's last request."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.late = [["_topk_forward"], []]

    def warmup_request(self) -> None:
        self.events.append("warmup")

    def compiled_late(self) -> list[str]:
        return self.late.pop(0)

    def measuring(self) -> None:
        self.events.append("measuring")


def test_warmup_gets_one_more_round_when_its_last_request_compiled_late() -> None:
    s = WorkloadSettings(outputs={"long": 4}, contexts=(0, 32), repeats=1, warmup=1)
    cells = [Cell(0, "long", 4), Cell(32, "long", 4)]
    with FakeServer(tokens_per_s=2000) as srv, Client(srv.url, "m") as client:
        watch = LateCompiles()
        said: list[str] = []
        out = run_grid(client, s, cells, 4096, progress=said.append, watch=watch)
        plain = run_grid(client, s, cells, 4096)
    assert out.warmup_requests == 4 and plain.warmup_requests == 2  # one round more: both contexts again
    assert watch.events == ["warmup"] * 4 + ["measuring"] and watch.late == []
    assert any("compiled _topk_forward late: one more round" in line for line in said)
