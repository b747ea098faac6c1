"""quantgate.progress in-process: the plain lines a CI log gets, and rich's redrawn line on a forced terminal."""

from __future__ import annotations

import io

from quantgate.progress import Output, PlainProgress, RichProgress


def _blocks() -> tuple[io.StringIO, list[str], Output]:
    stream, events = io.StringIO(), []
    return stream, events, Output(stream, lambda: events.append("open"), lambda: events.append("close"))


def test_plain_writes_one_line_per_stage_and_a_closing_line_with_verdicts() -> None:
    stream, events, output = _blocks()
    p = PlainProgress(output)
    p.stage("bf16", "starting engine (none, no spec)", since=0.0)
    p.stage("bf16", "cell 1/4 (ctx=0,out=short): 512.3 tok/s")
    p.pause()
    for outcome in ("passed", "passed", "failed"):
        p.verdict("bf16", outcome)
    p.finish("bf16")
    p.finish("bf16")  # once only
    p.pause()
    assert stream.getvalue().splitlines() == [
        "quantgate bf16           starting engine (none, no spec)",
        "quantgate bf16           cell 1/4 (ctx=0,out=short): 512.3 tok/s",
        "quantgate bf16           done: 1 failed, 2 passed",
    ]
    assert events == ["open", "close", "open", "close"]  # a block per stretch of work, closed before pytest writes


def test_rich_redraws_the_config_line_in_place_on_a_terminal() -> None:
    stream, events, output = _blocks()
    p = RichProgress(output, force_terminal=True, )
    p.stage("w8a8", "starting engine (w8a8, no spec)", since=0.0)
    p.stage("w8a8", "engine healthy after 35.2 s on port 4000")
    p.stage("w8a8", "cell 4/4 (ctx=512,out=long): 498.0 tok/s")
    p.verdict("w8a8", "passed")
    p.finish("w8a8")
    p.pause()
    out = stream.getvalue()
    assert "\x1b[" in out  # cursor control: the line is redrawn, not appended
    assert "starting engine (w8a8, no spec)" in out and "cell 4/4 (ctx=512,out=long): 498.0 tok/s" in out
    # what stays on screen: the config's one line in its final state
    final = out.rsplit("\x1b[2K", 1)[-1]
    assert "w8a8" in final and "done · 1 passed" in final
    assert events == ["open", "close"]


def test_rich_elapsed_seconds_tick_while_a_stage_lasts() -> None:
    import time

    stream, _, output = _blocks()
    p = RichProgress(output, force_terminal=True, )
    p.stage("bf16", "starting engine", since=time.monotonic() - 7)
    p.tick("bf16")
    p.pause()
    assert "starting engine 7 s" in stream.getvalue()


def test_plain_tick_writes_a_line_now_and_then() -> None:
    import time

    stream, _, output = _blocks()
    p = PlainProgress(output, every_s=30)
    p.stage("bf16", "starting engine", since=time.monotonic() - 31)
    p.tick("bf16")
    p.tick("bf16")  # not again before another 30 s
    assert stream.getvalue().splitlines()[1:] == ["quantgate bf16           starting engine (31 s)"]
