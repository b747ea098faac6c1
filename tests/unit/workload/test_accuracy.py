"""quantgate.workload.accuracy: the seeded problem set, the JSONL loader, scoring, Wilson bounds, the gate, the
figure."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from quantgate.models import _build_model
from quantgate.workload import accuracy
from quantgate.workload.accuracy import (
    AccuracyError,
    Problem,
    accuracy_figure,
    gate_accuracy,
    generate_problems,
    load_jsonl,
    run_accuracy,
    score,
    wilson_interval,
    z_for,
)
from quantgate.workload.grid import Client

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "accuracy" / "gsm8k-sample.jsonl"
_ARITH = re.compile(r"^(\d+) ([+-]) (\d+) =$")
_WORD = re.compile(r"^(\w+) has (\d+) (\w+) and (gets (\d+) more|gives away (\d+))\. How many (\w+) now\? Answer:$")


def solve(prompt: str) -> int:
    m = _ARITH.match(prompt)
    if m:
        a, op, b = int(m[1]), m[2], int(m[3])
        return a + b if op == "+" else a - b
    w = _WORD.match(prompt)
    assert w, prompt
    return int(w[2]) + int(w[5]) if w[5] else int(w[2]) - int(w[6])


# --- problem set ------------------------------------------------------------------------------------

def test_generated_set_is_deterministic_and_correct() -> None:
    problems = generate_problems()
    assert len(problems) == accuracy.DEFAULT_N >= 50
    assert problems == generate_problems(42, 100)
    assert problems != generate_problems(7)
    assert len({p.id for p in problems}) == len(problems)
    counts = {c: sum(p.category == c for p in problems) for c in accuracy.CATEGORIES}
    assert counts == {"add1": 30, "sub1": 20, "add2": 30, "word": 20}
    assert sum(p.easy for p in problems) == 50
    for p in problems:
        assert str(solve(p.prompt)) == p.answer
        assert int(p.answer) >= 0
    assert len(generate_problems(n=57)) == 57


def test_generated_set_is_the_same_in_another_process() -> None:
    code = "from quantgate.workload.accuracy import generate_problems as g; print([p.prompt for p in g()][:10])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "999", "PATH": ""})
    assert out.stdout.strip() == str([p.prompt for p in generate_problems()][:10])


@pytest.mark.parametrize("n", [0, 49, 50.0, True])
def test_generated_set_needs_50(n: Any) -> None:
    with pytest.raises(AccuracyError, match="n >= 50"):
        generate_problems(n=n)


def test_training_text_has_the_problem_set_formats() -> None:
    """qwen3-arith is trained on _build_model.arith_example: it must speak the accuracy set's formats."""
    assert _build_model.ARITH_NAMES == accuracy.NAMES and _build_model.ARITH_THINGS == accuracy.THINGS
    rng = random.Random(0)
    for category in accuracy.CATEGORIES:
        for _ in range(50):
            prompt, answer = _build_model.arith_example(rng, category)
            assert str(solve(prompt)) == answer
            m, w = _ARITH.match(prompt), _WORD.match(prompt)
            if m:
                assert prompt == accuracy.arithmetic_prompt(int(m[1]), m[2], int(m[3]))
            else:
                assert w is not None
                op, b = ("+", int(w[5])) if w[5] else ("-", int(w[6]))
                assert prompt == accuracy.word_prompt(w[1], int(w[2]), op, b, w[3])
    train_mix = set(_build_model.TRAIN_TASKS["arith-v2"]["mix"])
    assert train_mix == set(accuracy.CATEGORIES)


# --- JSONL ------------------------------------------------------------------------------------------

def test_load_gsm8k_jsonl() -> None:
    problems = load_jsonl(FIXTURE)
    assert [p.answer for p in problems] == ["7", "150", "27", "850", "0.125"]
    assert problems[0].prompt.startswith("Question: Ann has 3 boxes") and problems[0].prompt.endswith("\nAnswer:")
    assert problems[0].id == "line-1" and problems[0].category == "gsm8k" and not problems[0].easy
    assert len(load_jsonl(FIXTURE, limit=2)) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"question": "q", "answer": "#### 1"}\n{not json\n', r"x\.jsonl:2: not valid JSON"),
        ('\n\n{"question": "q"}\n', r"x\.jsonl:3: missing \"answer\""),
        ('{"answer": "#### 3"}\n', r"x\.jsonl:1: missing \"question\""),
        ('{"question": "q", "answer": "no final answer"}\n', r"x\.jsonl:1: \"answer\" has no '#### <number>'"),
        ('{"question": "q", "answer": "#### many"}\n', r"x\.jsonl:1: \"answer\" has no '#### <number>'"),
        ('[1, 2]\n', r"x\.jsonl:1: expected a JSON object"),
        ('{"question": "", "answer": "#### 3"}\n', r"x\.jsonl:1: \"question\" must be a non-empty string"),
        ('{"question": "q", "answer": null}\n', r"x\.jsonl:1: \"answer\" must be a non-empty string"),
        ("\n\n", r"x\.jsonl: no problems"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AccuracyError, match=expected) as info:
        load_jsonl(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_jsonl_missing_file_and_plain_numbers(tmp_path: Path) -> None:
    with pytest.raises(AccuracyError, match=r"nope\.jsonl: cannot read problem file"):
        load_jsonl(tmp_path / "nope.jsonl")
    path = tmp_path / "n.jsonl"
    path.write_text('{"id": "a", "question": "1+1?", "answer": 2}\n', encoding="utf-8")
    assert load_jsonl(path) == [Problem("a", "Question: 1+1?\nAnswer:", "2", "gsm8k", "1+1?")]


# --- scoring ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("gold", "text", "correct"),
    [
        ("19", " 19", True), ("19", " 19\n", True), ("19", "The answer is 19.", True), ("19", " 18", False),
        ("19", " 1 9", False), ("19", "", False), ("-3", " -3", True), ("1234", " 1,234", True),
        ("19", " \\boxed{19}", True), ("42", "6*7 = 42\n#### 42", True), ("0.125", "#### 1/8", True),
        ("150", "60 * 2.5 = 150 km", True),
    ],
)
def test_score(gold: str, text: str, correct: bool) -> None:
    ok, extracted, method = score(gold, text)
    assert ok is correct
    assert method in ("math-verify", "exact", "none")
    assert (extracted is None) == (method == "none")


def test_score_falls_back_to_exact_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accuracy, "_math_verify", lambda: None)
    assert score("19", "so 19.") == (True, "19", "exact")
    assert score("1234", " 1,234") == (True, "1234", "exact")
    assert score("19", " 18") == (False, "18", "exact")
    assert score("19", " nothing") == (False, None, "none")
    assert score("2.5", "2.50") == (True, "2.5", "exact")


def test_score_falls_back_when_math_verify_cannot_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(text: str, **kw: Any) -> list:
        return []

    monkeypatch.setattr(accuracy, "_math_verify", lambda: (parse, None, ()))
    assert score("7", " 7") == (True, "7", "exact")


# --- Wilson and the gate ----------------------------------------------------------------------------

def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(8, 10)  # two-sided 95%: the textbook example
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi) and (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[1] > 0 and wilson_interval(10, 10)[0] < 1
    # more samples, tighter bounds
    assert wilson_interval(800, 1000)[0] > wilson_interval(80, 100)[0] > wilson_interval(8, 10)[0]
    assert z_for(0.95) == pytest.approx(1.6449, abs=1e-4)
    assert z_for(0.95, one_sided=False) == pytest.approx(1.96, abs=1e-3)


@pytest.mark.parametrize(("k", "n"), [(1, 0), (-1, 10), (11, 10)])
def test_wilson_rejects_bad_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_gate_pass_fail_indeterminate() -> None:
    assert gate_accuracy(90, 100, threshold=0.8).outcome == "pass"  # lower bound ~0.84
    fail = gate_accuracy(50, 100, threshold=0.8)  # upper bound ~0.58
    assert fail.outcome == "fail" and not fail.passed
    unsure = gate_accuracy(8, 10, threshold=0.75)  # 0.80 measured, but n=10 cannot tell
    assert unsure.outcome == "indeterminate"
    assert "n=10" in unsure.message() and "0.750" in unsure.message()
    # vLLM's ci gate passes iff the one-sided 95% lower bound is >= the threshold
    lo = wilson_interval(90, 100, z_for(0.95))[0]
    assert gate_accuracy(90, 100, threshold=lo).passed and not gate_accuracy(90, 100, lo + 1e-9).passed


# --- running against a server -----------------------------------------------------------------------

class FakeClient:
    """What run_accuracy needs of quantgate.workload.grid.Client: .http and .model."""

    def __init__(self, handler: Any) -> None:
        self.model = "arith"
        self.http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
        self.bodies: list[dict] = []


def arith_server(bodies: list[dict], wrong: str = "-") -> Any:
    """Answers sums right and differences wrong (off by one)."""
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        prompt = body["prompt"]
        value = solve(prompt)
        if (wrong in prompt.split("=")[0] and _ARITH.match(prompt)) or "gives away" in prompt and wrong == "-":
            value += 1
        return httpx.Response(200, json={"choices": [{"text": f" {value}", "finish_reason": "stop"}],
                                         "usage": {"completion_tokens": 3}})
    return handler


@pytest.mark.parametrize("concurrency", [1, 4])
def test_run_accuracy_scores_in_problem_order(concurrency: int) -> None:
    bodies: list[dict] = []
    client = FakeClient(arith_server(bodies))
    problems = generate_problems()
    result = run_accuracy(client, problems, max_tokens=8, concurrency=concurrency, source="generated")
    assert [a.problem for a in result.answers] == problems
    subtractions = sum(p.category == "sub1" or "gives away" in p.prompt for p in problems)
    assert result.n == 100 and result.correct == 100 - subtractions
    assert result.by_category()["add1"] == (30, 30) and result.by_category()["sub1"] == (0, 20)
    assert result.invalid == 0 and result.answers[0].finish_reason == "stop"
    body = bodies[0]
    assert body["temperature"] == 0 and body["seed"] == 42 and body["stream"] is False
    assert body["max_tokens"] == 8 and body["stop"] == ["\n"] and body["model"] == "arith"
    d = result.to_dict()
    assert d["n"] == 100 and d["answers"][0]["id"] == problems[0].id


def test_run_accuracy_uses_gsm8k_stops_and_workload_client() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, json={"choices": [{"text": " 3 * 4 = 12, 12 - 5 = 7\n#### 7"}]})

    client = Client("http://test", "m", api_key="k")
    client.http = httpx.Client(base_url="http://test", headers=client.http.headers,
                               transport=httpx.MockTransport(handler))
    result = run_accuracy(client, load_jsonl(FIXTURE), max_tokens=256)
    assert bodies[0]["stop"] == ["\n\n", "Question:"]
    assert [a.correct for a in result.answers] == [True, False, False, False, False]


@pytest.mark.parametrize(
    ("response", "message"),
    [(httpx.Response(500, text="boom"), "HTTP 500"), (httpx.Response(200, json={"choices": []}), "malformed")],
)
def test_run_accuracy_server_errors(response: httpx.Response, message: str) -> None:
    client = FakeClient(lambda request: response)
    with pytest.raises(AccuracyError, match=message):
        run_accuracy(client, generate_problems())


def test_accuracy_figure() -> None:
    client = FakeClient(arith_server([]))
    result = run_accuracy(client, generate_problems())
    fig = accuracy_figure(result)
    assert (fig.name, fig.unit, fig.higher_is_better, fig.gated) == ("math_accuracy", "fraction", True, True)
    assert len(fig.samples) == 100 and set(fig.samples) == {0.0, 1.0}
    assert sum(fig.samples) / len(fig.samples) == fig.extra["accuracy"] == result.accuracy
    lo, hi = wilson_interval(result.correct, 100, z_for(0.95))
    assert (fig.extra["wilson_lower"], fig.extra["wilson_upper"]) == (lo, hi)
    assert fig.extra["easy_accuracy"] == 30 / 50
    assert fig.extra["by_category"]["add2"] == {"correct": 30, "n": 30}
    assert fig.summary()["n"] == 100
