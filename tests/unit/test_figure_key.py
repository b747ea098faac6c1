"""FigureKey: the one format and parser of figure names; names on disk must stay byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantgate.config.matrix import MatrixError, load_matrix
from quantgate.stats import Figure, FigureKey, FigureKeyError

REPO = Path(__file__).resolve().parents[2]


def test_every_stored_baseline_name_round_trips_byte_identical() -> None:
    names = set()
    for path in (REPO / "baselines").rglob("*.json"):
        body = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(body, dict) and isinstance(body.get("figures"), dict):
            names.update(body["figures"])
    assert "decode_tps[ctx=0,out=long]" in names and "rel_decode_tps[ctx=0,out=long]" in names  # found them
    for name in names:
        assert str(FigureKey.parse(name)) == name


@pytest.mark.parametrize(("name", "key"), [
    ("decode_tps[ctx=512,out=long]", FigureKey("decode_tps", ctx=512, out="long")),
    ("pp_tps[pp=512,depth=0]", FigureKey("pp_tps", pp=512, depth=0)),
    ("tg_tps_server[tg=32,depth=1024]", FigureKey("tg_tps_server", tg=32, depth=1024)),
    ("itl_ms_p99.9[c=8]", FigureKey("itl_ms_p99.9", c=8)),
    ("prefill_tps[ctx=512]", FigureKey("prefill_tps", ctx=512)),
    ("math_accuracy", FigureKey("math_accuracy")),
])
def test_parse_and_format(name: str, key: FigureKey) -> None:
    assert FigureKey.parse(name) == key and str(key) == name
    assert Figure(name, "u", True, (1.0,)).metric == key.metric


def test_relative_and_named() -> None:
    cell = FigureKey("", ctx=0, out="long")
    assert cell.named("decode_tps") == "decode_tps[ctx=0,out=long]" and cell.params == "ctx=0,out=long"
    assert str(FigureKey.parse("decode_tps[ctx=0,out=long]").relative()) == "rel_decode_tps[ctx=0,out=long]"


@pytest.mark.parametrize(("name", "message"), [
    ("decode_tps[depth=0,pp=512]", "not in the canonical form 'decode_tps[pp=512,depth=0]'"),
    ("decode_tps[foo=1]", "bad parameter 'foo=1'"),
    ("decode_tps[ctx=1,ctx=2]", "bad parameter 'ctx=2'"),
    ("decode_tps[ctx=lots]", "ctx must be an integer, got 'lots'"),
    ("decode_tps[ctx=0", "is not metric or metric[param=value,...]"),
])
def test_bad_names_name_themselves(name: str, message: str) -> None:
    with pytest.raises(FigureKeyError) as err:
        FigureKey.parse(name)
    assert repr(name) in str(err.value) and message in str(err.value)


_ints = st.none() | st.integers(min_value=0, max_value=10**6)


@given(metric=st.from_regex(r"[a-z_][a-z0-9_.]{0,20}", fullmatch=True), ctx=_ints,
       out=st.none() | st.from_regex(r"[A-Za-z0-9_.+-]{1,8}", fullmatch=True), pp=_ints, tg=_ints, depth=_ints,
       c=_ints)
def test_format_then_parse_is_identity(metric, ctx, out, pp, tg, depth, c) -> None:
    key = FigureKey(metric, ctx=ctx, out=out, pp=pp, tg=tg, depth=depth, c=c)
    assert FigureKey.parse(str(key)) == key


def test_an_output_name_that_cannot_be_in_a_figure_name_is_a_matrix_error(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[workload]\noutputs = { "very long" = 64 }\n\n[[config]]\nid = "a"\nmodel = "/m"\n')
    with pytest.raises(MatrixError, match=r"m.toml: \[workload\]: output name 'very long'"):
        load_matrix(path)
