"""Property: any bytes in a matrix file give a Matrix or one MatrixError, never another exception.

Two generators: whole matrices built from quantgate's own key names with values of every TOML type (and a few
hostile ones), and byte-level mutations of real matrices (deletions, duplications, stray bytes, Latin-1).
The example count comes from the Hypothesis profile (tests/conftest.py): a few hundred in CI, 10,000 with
QUANTGATE_HYPOTHESIS_PROFILE=nightly.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quantgate.config import matrix as matrix_mod
from quantgate.config.matrix import MatrixError, load_matrices, load_matrix

REPO = Path(__file__).resolve().parents[3]
SEEDS = [(REPO / "fixtures/matrix/cpu.toml").read_bytes(), (REPO / "fixtures/matrix/sm121.toml").read_bytes()]
SEEDS.append(b"""
[gate]
mode = "relative"
reference = "a"
default_tolerance = 0.2
[workload]
outputs = { short = 8, long = 24 }
contexts = [0, 128]
request_timeout_s = 30.0
[accuracy]
problems = 60
[benchy]
[concurrency]
[defaults]
env = { A = "1" }
serve_args = ["--enforce-eager"]
[[config]]
id = "a"
model = "/m"
[[config]]
id = "b"
model = { recipe = "qwen3-dense" }
quantization = "w4a16"
speculative = { method = "ngram", num_speculative_tokens = 3, prompt_lookup_max = 4 }
expected_failure = { reason = "x", stage = "any", hardware = ["cpu"] }
expected_slow = { reason = "y", hardware = ["cpu-amx"] }
budget_s = 60
workloads = ["grid", "benchy", "concurrency", "accuracy"]
""")

KEYS = sorted(
    matrix_mod._TOP_KEYS | matrix_mod._CONFIG_KEYS | matrix_mod._SPEC_KEYS | matrix_mod._WORKLOAD_KEYS
    | matrix_mod._ACCURACY_KEYS | matrix_mod._GATE_KEYS | {"reason", "stage", "recipe", "short", "long"}
)
WORDS = ["noise", "..", "workers", "report.md", "a/b", "--host=0.0.0.0", "--port", "VLLM_API_KEY", "${NOPE}",
         "$HOME/x", "cpu", "sm121", "relative", "absolute", "w4a16", "bf16", "ngram", "eagle3", "grid", "benchy",
         "accuracy", "concurrency", "start", "any", "", " ", "é", "\x7f", "a" * 300]


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    """Inline TOML for a generated value (TOML has no null; generated values never hold None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-2, max_value=600),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS), st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8))
values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
configs = st.dictionaries(st.sampled_from(sorted(matrix_mod._CONFIG_KEYS)), values, max_size=6).map(
    lambda d: {"id": "c", "model": "/m", **d})


@st.composite
def generated_matrix(draw: st.DrawFn) -> bytes:
    top: dict[str, Any] = draw(st.dictionaries(st.sampled_from(sorted(matrix_mod._TOP_KEYS - {"config"})),
                                               st.one_of(values, st.dictionaries(keys, values, max_size=5)),
                                               max_size=5))
    top["config"] = draw(st.one_of(st.lists(configs, min_size=0, max_size=3), values))
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in top.items()]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


@st.composite
def mutated_matrix(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        span = draw(st.integers(1, 40))
        kind = draw(st.sampled_from(["delete", "duplicate", "byte", "token"]))
        if kind == "delete":
            del data[at:at + span]
        elif kind == "duplicate":
            data[at:at] = data[at:at + span]
        elif kind == "byte":  # a stray byte: TOML punctuation, a digit, or Latin-1 that is not UTF-8
            data[at:at + 1] = bytes([draw(st.sampled_from(list(b'[]{}=",.\n#-0123456789tf') + [0xE9, 0xFF, 0]))])
        else:
            token = draw(st.sampled_from(WORDS + ["true", "1", "-1", "0.0", "[1]", "{}", "5.0", '"x"', "[[config]]"]))
            data[at:at] = token.encode("utf-8", "surrogatepass")
    return bytes(data)


def _loads_or_matrix_error(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.toml"
        path.write_bytes(body)
        try:
            load_matrices([path], "cpu-amx")
        except MatrixError as exc:
            assert str(path) in str(exc) or str(exc).startswith("no matrix"), exc
            return
        load_matrix(path)  # loads twice the same way: nothing depends on state left by the first load


@pytest.mark.fault("matrix", "random and mutated TOML (Hypothesis; 10,000 examples nightly)",
                   "every input is a Matrix or one MatrixError naming the file; no other exception")
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(generated_matrix(), mutated_matrix()))
@example(b"config = [1]\n")
@example(b"defaults = 1\n[[config]]\nid = 'a'\nmodel = '/m'\n")
@example(b"[[config]]\nid = 'a'\nmodel = '/m'\nenv = \"X=1\"\n")
@example("[[config]]\nid = 'a'\nmodel = '/m'\nlabel = 'd\u00e9j\u00e0'\n".encode("latin-1"))
@example(b"[[config]]\nid = 'a'\nmodel = '/m'\n[gate]\ndefault_tolerance = 'x'\n")
@example(b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n")
def test_any_matrix_is_valid_or_one_matrix_error(body: bytes) -> None:
    _loads_or_matrix_error(body)
