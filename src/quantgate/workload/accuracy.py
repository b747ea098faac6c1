"""Math accuracy: a seeded arithmetic problem set (or a user's GSM8K-style JSONL), answers scored with
math-verify, and a figure gated with a Wilson score bound on the sample size, like vLLM's accuracy gate.

    problems = generate_problems(seed=42, n=100)          # or load_jsonl("gsm8k_test.jsonl")
    result = run_accuracy(client, problems, max_tokens=8)  # client: quantgate.workload.grid.Client
    figure = accuracy_figure(result)                      # Figure "math_accuracy", samples = per-problem 0/1
    verdict = gate_accuracy(result.correct, result.n, threshold=baseline - tolerance)

Requests are non-streaming POST /v1/completions, temperature 0, seed 42. Scoring runs in the calling thread
after every answer is in (math-verify's timeouts use signals, which only work in the main thread).

The generated set matches what the `qwen3-arith` model recipe is trained on (quantgate.models.recipes): "12 + 7 ="
style sums and differences and one-line word problems ending in "Answer:". Random-weight models score about
0 on it; the trained tiny model scores well above chance, so its quantized variants' accuracy is a real,
measured change.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, Protocol

from ..errors import QuantgateError
from ..stats import Figure

DEFAULT_SEED = 42
DEFAULT_N = 100
REQUEST_SEED = 42
CONFIDENCE = 0.95  # one-sided, as vLLM's accuracy_gate.py gate="ci"
FIGURE_NAME = "math_accuracy"
# Arithmetic prompts end in "=" / "Answer:" and the answer is one line; GSM8K-style answers may reason over
# several lines, and a few-shot model would go on with the next "Question:".
ARITH_STOP = ("\n",)
GSM8K_STOP = ("\n\n", "Question:")

# Word-problem vocabulary: words the shared tokenizer knows, so prompts stay short (and the same lists the
# qwen3-arith training data uses; tests/unit/workload/test_accuracy.py checks they agree).
NAMES = ("Ann", "Ben", "Tom", "Sam", "Mia", "Leo")
THINGS = ("books", "cards", "stones", "trees", "tokens", "cups")
CATEGORIES = ("add1", "sub1", "add2", "word")
EASY = ("add1", "sub1")


class AccuracyError(QuantgateError, ValueError):
    """Bad problem input (the message names the file and line) or a server that answered wrongly."""


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str  # sent as-is to /v1/completions
    answer: str  # the gold answer, a number as text ("19", "-3", "2.5")
    category: str = "gsm8k"  # add1 | sub1 | add2 | word | gsm8k
    question: str = ""  # the question without the prompt's framing (for reports)

    @property
    def easy(self) -> bool:
        return self.category in EASY


@dataclass(frozen=True)
class Answer:
    problem: Problem
    text: str  # the completion
    correct: bool
    extracted: str | None  # what the scorer read from the completion (None: nothing it could parse)
    method: str  # "math-verify" | "exact" (fallback) | "none"
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class AccuracyResult:
    answers: list[Answer] = field(default_factory=list)
    source: str = ""  # "generated seed=42 n=100" or the JSONL path
    max_tokens: int = 0
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else math.nan

    @property
    def invalid(self) -> int:
        """Answers with no number in them (vLLM's gsm8k script reports these as INVALID)."""
        return sum(a.extracted is None for a in self.answers)

    def subset(self, keep: Callable[[Problem], bool]) -> AccuracyResult:
        return AccuracyResult([a for a in self.answers if keep(a.problem)], self.source, self.max_tokens, 0.0)

    def by_category(self) -> dict[str, tuple[int, int]]:
        """category -> (correct, n)."""
        out: dict[str, tuple[int, int]] = {}
        for a in self.answers:
            k, n = out.get(a.problem.category, (0, 0))
            out[a.problem.category] = (k + a.correct, n + 1)
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "max_tokens": self.max_tokens, "n": self.n, "correct": self.correct,
            "accuracy": self.accuracy, "invalid": self.invalid, "wall_s": round(self.wall_s, 3),
            "by_category": {c: {"correct": k, "n": n} for c, (k, n) in self.by_category().items()},
            "answers": [{"id": a.problem.id, "category": a.problem.category, "gold": a.problem.answer,
                         "text": a.text, "extracted": a.extracted, "correct": a.correct, "method": a.method,
                         "finish_reason": a.finish_reason} for a in self.answers],
        }


# --- problem sets -----------------------------------------------------------------------------------

def arithmetic_prompt(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} ="


def word_prompt(name: str, a: int, op: str, b: int, thing: str) -> str:
    verb = f"gets {b} more" if op == "+" else f"gives away {b}"
    return f"{name} has {a} {thing} and {verb}. How many {thing} now? Answer:"


def generate_problems(seed: int = DEFAULT_SEED, n: int = DEFAULT_N) -> list[Problem]:
    """`n` problems (at least 50), the same for the same seed on every machine: 30% single-digit sums,
    20% single-digit differences (never negative) — the easy subset —, 30% two-digit sums, 20% word problems
    with numbers up to 20. Ids are unique; duplicates are allowed (single digits only have 100 sums)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 50:
        raise AccuracyError(f"a generated problem set needs n >= 50 problems, got {n!r}")
    rng = random.Random(f"quantgate-accuracy:{seed}")  # str seeds hash with sha512: stable across processes
    counts = {"add1": round(0.3 * n), "sub1": round(0.2 * n), "add2": round(0.3 * n)}
    counts["word"] = n - sum(counts.values())
    problems: list[Problem] = []
    for category in CATEGORIES:
        for _ in range(counts[category]):
            if category == "add1":
                a, b, op = rng.randint(0, 9), rng.randint(0, 9), "+"
            elif category == "sub1":
                a, b, op = rng.randint(0, 9), rng.randint(0, 9), "-"
                a, b = max(a, b), min(a, b)
            elif category == "add2":
                a, b, op = rng.randint(10, 99), rng.randint(10, 99), "+"
            else:
                op = rng.choice("+-")
                a, b = rng.randint(1, 20), rng.randint(1, 20)
                if op == "-":
                    a, b = max(a, b), min(a, b)
            value = a + b if op == "+" else a - b
            if category == "word":
                name, thing = rng.choice(NAMES), rng.choice(THINGS)
                prompt = word_prompt(name, a, op, b, thing)
                question = prompt.removesuffix(" Answer:")
            else:
                prompt = question = arithmetic_prompt(a, op, b)
            problems.append(Problem(f"{category}-{len(problems):03d}", prompt, str(value), category, question))
    order = list(range(len(problems)))
    rng.shuffle(order)  # interleave categories so a partial run still samples all of them
    return [problems[i] for i in order]


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def load_jsonl(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """GSM8K-style JSONL, one {"question": ..., "answer": "... #### 42"} per line (blank lines skipped).

    Errors are one line naming the file and line: `gsm8k.jsonl:7: "answer" has no '#### <number>' final
    answer`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise AccuracyError(f"{p}: cannot read problem file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AccuracyError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    problems: list[Problem] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AccuracyError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise AccuracyError(f"{where}: expected a JSON object with \"question\" and \"answer\", "
                                f"got {type(row).__name__}")
        for key in ("question", "answer"):
            if key not in row:
                raise AccuracyError(f"{where}: missing \"{key}\"")
            if not isinstance(row[key], (str, int, float)) or isinstance(row[key], bool) \
                    or not str(row[key]).strip():
                raise AccuracyError(f"{where}: \"{key}\" must be a non-empty string, got {row[key]!r}")
        answer = str(row["answer"])
        match = _GSM8K_FINAL.search(answer)
        final = match.group(1) if match else answer if isinstance(row["answer"], (int, float)) else None
        number = _number(final) if final is not None else None
        if number is None:
            raise AccuracyError(f"{where}: \"answer\" has no '#### <number>' final answer: "
                                f"{_clip(answer)!r}")
        pid = str(row.get("id", f"line-{lineno}"))
        question = str(row["question"])
        problems.append(Problem(pid, gsm8k_prompt(question), number, "gsm8k", question.strip()))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise AccuracyError(f"{p}: no problems in the file")
    return problems


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _number(text: str) -> str | None:
    """The last number in `text`, normalized ("1,234.50" -> "1234.5", "$42." -> "42"), or None."""
    found = _NUMBER.findall(text.replace("\u2212", "-"))
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        value = float(raw)
    except ValueError:  # pragma: no cover - the regex only matches numbers
        return None
    if not math.isfinite(value):
        return None
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


# --- scoring ----------------------------------------------------------------------------------------

def _math_verify() -> tuple[Any, Any, Any] | None:
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except ImportError:  # pragma: no cover - a dependency; the exact-match fallback still scores
        return None
    return parse, verify, (ExprExtractionConfig(), LatexExtractionConfig())


def score(gold: str, text: str) -> tuple[bool, str | None, str]:
    """(correct, extracted, method) for one completion.

    math-verify parses the gold and the completion (numbers and LaTeX, "\\boxed{}" and "#### N" included) and
    compares them symbolically. When it cannot parse either side (or is not installed, or times out), the
    fallback is an exact numeric match of the completion's last number."""
    text = _GSM8K_FINAL.search(text).group(1) if "####" in text else text  # type: ignore[union-attr]
    mv = _math_verify()
    if mv is not None:
        parse, verify, configs = mv
        # its timeouts use signal.alarm, which raises outside the main thread
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        try:
            gold_parsed = parse(gold, extraction_config=configs, parsing_timeout=timeout)
            pred = parse(text, extraction_config=configs, parsing_timeout=timeout)
            if gold_parsed and pred:
                ok = bool(verify(gold_parsed, pred, timeout_seconds=timeout))
                return ok, str(pred[-1]), "math-verify"
        except Exception:  # noqa: BLE001 - math-verify raising on odd input: fall back, never crash a run
            pass
    extracted = _number(text)
    if extracted is None:
        return False, None, "none"
    want = _number(gold)
    return extracted == want, extracted, "exact"


# --- running ----------------------------------------------------------------------------------------

class HasHttp(Protocol):
    """quantgate.workload.grid.Client, or anything with an httpx.Client `.http` (base_url, auth) and `.model`."""

    http: Any
    model: str


def _complete(client: HasHttp, problem: Problem, max_tokens: int, stop: Sequence[str]) -> dict[str, Any]:
    body = {"model": client.model, "prompt": problem.prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "seed": REQUEST_SEED, "stop": list(stop), "stream": False}
    resp = client.http.post("/v1/completions", json=body)
    if resp.status_code != 200:
        raise AccuracyError(f"POST /v1/completions answered HTTP {resp.status_code} for problem "
                            f"{problem.id}: {resp.text[:300]!r}")
    try:
        data = resp.json()
        choice = data["choices"][0]
        return {"text": str(choice.get("text") or ""), "finish_reason": choice.get("finish_reason"),
                "completion_tokens": int((data.get("usage") or {}).get("completion_tokens") or 0)}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise AccuracyError(f"malformed completion for problem {problem.id}: {resp.text[:200]!r}") from exc


def run_accuracy(
    client: HasHttp, problems: Iterable[Problem], *, max_tokens: int = 8, concurrency: int = 1,
    stop: Sequence[str] | None = None, source: str = "",
    progress: Callable[[str], None] | None = None,
) -> AccuracyResult:
    """Ask every problem once (temperature 0, seed 42, non-streaming) and score the answers.

    `stop` defaults to a newline for generated problems and to blank line / "Question:" for GSM8K-style
    ones; `max_tokens` 8 suits the generated set (answers are at most 4 tokens), GSM8K needs ~256.
    Answers come back in problem order whatever `concurrency` is."""
    import time

    items = list(problems)
    if not items:
        raise AccuracyError("no problems to run")
    if max_tokens < 1:
        raise AccuracyError(f"max_tokens must be >= 1, got {max_tokens}")
    if stop is None:
        stop = GSM8K_STOP if any(p.category == "gsm8k" for p in items) else ARITH_STOP
    started = time.perf_counter()

    def ask(p: Problem) -> dict[str, Any]:
        return _complete(client, p, max_tokens, stop)

    if concurrency > 1:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            raw = list(pool.map(ask, items))
    else:
        raw = []
        for i, p in enumerate(items):
            raw.append(ask(p))
            if progress and (i + 1) % 25 == 0:
                progress(f"accuracy: {i + 1}/{len(items)} answered")
    answers = []
    for p, r in zip(items, raw, strict=True):  # scored here, in the calling thread (math-verify uses signals)
        ok, extracted, method = score(p.answer, r["text"])
        answers.append(Answer(p, r["text"], ok, extracted, method, r["finish_reason"], r["completion_tokens"]))
    return AccuracyResult(answers, source, max_tokens, time.perf_counter() - started)


# --- statistics and the gate -------------------------------------------------------------------------

def z_for(confidence: float, *, one_sided: bool = True) -> float:
    """The normal quantile for a one-sided (default, as vLLM's gate) or two-sided interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    q = confidence if one_sided else (1 + confidence) / 2
    return NormalDist().inv_cdf(q)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials: (lower, upper). z=1.96 is two-sided 95%;
    vLLM's gate uses the one-sided bound at 95% (z = 1.645, `z_for(0.95)`)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n ({n}), got {k}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # clamp float dust: at k=0 the lower bound is exactly 0, at k=n the upper is exactly 1
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


@dataclass(frozen=True)
class AccuracyVerdict:
    outcome: Literal["pass", "fail", "indeterminate"]  # a subset of quantgate.gate.baselines.Outcome
    accuracy: float
    lower: float
    upper: float
    threshold: float
    n: int
    confidence: float

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def message(self) -> str:
        what = {"pass": "at least", "fail": "below", "indeterminate": "cannot tell if it is at least"}
        return (f"math_accuracy {self.accuracy:.3f} (n={self.n}, {self.confidence:.0%} Wilson bounds "
                f"{self.lower:.3f}..{self.upper:.3f}) is {what[self.outcome]} the threshold {self.threshold:.3f}")


def gate_accuracy(k: int, n: int, threshold: float, confidence: float = CONFIDENCE) -> AccuracyVerdict:
    """vLLM's accuracy_gate.py gate="ci", with the third outcome quantgate's gate reports.

    pass: the one-sided Wilson lower bound is >= threshold (exactly vLLM's pass condition);
    fail: even the one-sided upper bound is below the threshold (the model is worse, with that confidence);
    indeterminate: neither, i.e. n is too small to tell. vLLM itself fails everything that is not a pass;
    the threshold is typically the baseline's accuracy minus an absolute tolerance (vLLM's default 0.08)."""
    z = z_for(confidence)
    lower, upper = wilson_interval(k, n, z)
    return AccuracyVerdict("pass" if lower >= threshold else "fail" if upper < threshold else "indeterminate",
                           k / n, lower, upper, threshold, n, confidence)


def accuracy_figure(result: AccuracyResult, *, confidence: float = CONFIDENCE, name: str = FIGURE_NAME,
                    gated: bool = True) -> Figure:
    """The gated figure: samples are the per-problem 0/1 scores (so n is the sample count; their mean is the
    accuracy — not their median), `extra` carries the accuracy, the Wilson bounds and the per-category
    counts."""
    if not result.n:
        raise AccuracyError("no answers to make a figure from")
    z = z_for(confidence)
    lower, upper = wilson_interval(result.correct, result.n, z)
    easy = result.subset(lambda p: p.easy)
    extra: dict[str, Any] = {
        "accuracy": result.accuracy, "correct": result.correct, "n": result.n,
        "wilson_lower": lower, "wilson_upper": upper, "confidence": confidence, "z": z,
        "one_sided": True, "invalid": result.invalid, "source": result.source,
        "by_category": {c: {"correct": k, "n": n} for c, (k, n) in result.by_category().items()},
    }
    if easy.n:
        extra["easy_accuracy"] = easy.accuracy
    return Figure(
        name, "fraction", True, tuple(float(a.correct) for a in result.answers), "derived", gated=gated,
        note=f"{result.correct}/{result.n} correct, {confidence:.0%} Wilson {lower:.3f}..{upper:.3f}",
        extra=extra,
    )
