from dataclasses import dataclass, field
from pathlib import Path

from quantgate.report.plots import acceptance_series, decode_series, plot_acceptance, plot_decode_vs_context
from quantgate.stats import Figure

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class _Cfg:
    id: str


@dataclass
class _M:
    config: _Cfg
    figures: dict[str, Figure] = field(default_factory=dict)


def _decode(cid: str, base: float, spec: list[float] | None = None) -> _M:
    m = _M(_Cfg(cid))
    for ctx in (0, 512, 2048):
        for out, f in (("short", 1.0), ("long", 0.9)):
            name = f"decode_tps[ctx={ctx},out={out}]"
            v = base * f / (1 + ctx / 4096)
            m.figures[name] = Figure(name, "tok/s", True, (v * 0.98, v, v * 1.03, float("nan")))
    m.figures["ttft_ms[ctx=0,out=short]"] = Figure("ttft_ms[ctx=0,out=short]", "ms", False, (5.0,))
    if spec is not None:
        m.figures["acceptance_length"] = Figure(
            "acceptance_length", "tokens", True, (1 + sum(spec),),
            extra={"per_position": spec, "draft_acceptance_rate": sum(spec) / len(spec), "drafts": 40})
    return m


def test_series_extraction() -> None:
    ms = [_decode("bf16", 300), _decode("ngram-nst3", 250, [0.6, 0.4, 0.2])]
    series = decode_series(ms)
    assert sorted(series) == ["long", "short"]
    pts = series["short"]["bf16"]
    assert [p[0] for p in pts] == [0, 512, 2048]
    ctx0 = pts[0]
    assert ctx0[2] <= ctx0[1] <= ctx0[3] and ctx0[1] > 0  # nan sample ignored
    acc = acceptance_series(ms)
    assert list(acc) == ["ngram-nst3"] and acc["ngram-nst3"][0] == [0.6, 0.4, 0.2]


def test_pngs_are_written(tmp_path: Path) -> None:
    ms = [_decode("bf16", 300), _decode("w4a16", 280), _decode("ngram-nst3", 250, [0.6, 0.4, 0.2]),
          _decode("mtp", 260, [0.8, 0.5])]
    dec = plot_decode_vs_context(ms, tmp_path / "plots" / "decode_vs_context.png")
    acc = plot_acceptance(ms, tmp_path / "plots" / "acceptance.png")
    assert dec is not None and acc is not None
    for p in (dec, acc):
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000


def test_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    ms = [_M(_Cfg("x"), {"ttft_ms[ctx=0,out=short]": Figure("ttft_ms[ctx=0,out=short]", "ms", False, (1.0,))})]
    assert plot_decode_vs_context(ms, tmp_path / "a.png") is None
    assert plot_acceptance(ms, tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())
