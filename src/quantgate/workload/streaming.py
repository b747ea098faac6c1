"""A lean asyncio HTTP/1.1 client for streamed completions: stamp every socket read, parse afterwards.

Why not aiohttp (what `vllm bench serve` uses): a client timing N streams on one core must keep its per-chunk
work small, or chunks queue behind each other in the event loop and the timed gaps stretch. aiohttp wakes a
coroutine per read and the caller decodes, splits and json-parses every event before taking the time
(vllm bench serve stamps *after* json.loads). Here the event loop calls `data_received`, which only appends
`(perf_counter(), bytes)`; HTTP framing, SSE lines and JSON are parsed once the response is complete, and
every event gets the time of the read that completed it. benchmarks/headroom.py measures the difference.

Covers what an OpenAI-compatible server sends: `Transfer-Encoding: chunked` (uvicorn), `Content-Length`
(error bodies) or read-until-close (HTTP/1.0 servers); keep-alive connections are pooled per client; http
and https. Run it on `event_loop()`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from bisect import bisect_left
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import QuantgateError

_perf = time.perf_counter
T = TypeVar("T")


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (vLLM's own server runs on it; it reads a socket in C, roughly halving the
    client's CPU per chunk), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on `event_loop()` (asyncio.Runner's loop_factory needs Python 3.11)."""
    loop = event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


class StreamError(QuantgateError):
    """The connection failed, stalled or closed before the response was complete."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    reads: list[tuple[float, bytes]]  # (perf_counter at arrival, raw bytes) of every socket read
    body_start: int  # offset of the body in the concatenated reads
    chunked: bool  # Transfer-Encoding: chunked
    length: int | None  # Content-Length; neither: the body ends at the close

    def body_segments(self) -> Iterator[tuple[float, bytes]]:
        """The body with the transfer framing removed, as (arrival time, bytes) pieces in order."""
        raw = b"".join(data for _, data in self.reads)
        ends: list[int] = []
        total = 0
        for _, data in self.reads:
            total += len(data)
            ends.append(total)

        def pieces(a: int, b: int) -> Iterator[tuple[float, bytes]]:
            # raw[a:b] split at read boundaries, each part stamped with the read that brought its last byte
            while a < b:
                i = bisect_left(ends, a + 1)
                stop = min(b, ends[i])
                yield self.reads[i][0], raw[a:stop]
                a = stop

        if not self.chunked:
            end = self.body_start + self.length if self.length is not None else len(raw)
            yield from pieces(self.body_start, min(end, len(raw)))
            return
        pos = self.body_start
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                return  # incomplete size line: the caller sees a body without its end
            size = int(raw[pos:eol].split(b";", 1)[0] or b"0", 16)
            if size == 0:
                return
            start = eol + 2
            yield from pieces(start, min(start + size, len(raw)))
            pos = start + size + 2

    def lines(self) -> Iterator[tuple[float, str]]:
        """Complete body lines (without the newline) with the arrival time of their last byte."""
        pending = b""
        for t, seg in self.body_segments():
            pending += seg
            if b"\n" not in seg:
                continue
            *done, pending = pending.split(b"\n")
            for line in done:
                yield t, line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield self.reads[-1][0], pending.rstrip(b"\r").decode("utf-8", "replace")

    def text(self) -> str:
        return b"".join(seg for _, seg in self.body_segments()).decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the hot path (`data_received`) appends and checks the response's end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.head: tuple[int, dict[str, str], int] | None = None
        self.received = 0
        self.tail = b""
        self.chunked = False
        self.length: int | None = None
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reads.append((_perf(), data))
        self.received += len(data)
        if self.head is None:
            self._parse_head()
            if self.head is None:
                return
        else:
            self.tail = (self.tail + data)[-7:]
        if self.chunked:
            # the last chunk "0\r\n\r\n" follows the previous chunk's "\r\n" (or starts the body); an SSE
            # payload ends in "\n\n", so no data chunk ends this way
            if self.tail.endswith(b"\r\n0\r\n\r\n"):
                self._finish()
        elif self.length is not None and self.received - self.head[2] >= self.length:
            self._finish()
        # otherwise the body ends when the server closes the connection

    def _parse_head(self) -> None:
        raw = b"".join(d for _, d in self.reads)
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return
        status_line, *header_lines = raw[:end].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            self._fail(StreamError(f"not an HTTP response: {status_line[:80]!r}"))
            return
        headers = {}
        for h in header_lines:
            name, _, value = h.partition(":")
            headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
            headers["connection"] = "close"
        self.head = (status, headers, end + 4)
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self.length = int(length) if length is not None and length.isdigit() else None
        self.tail = (b"\r\n" + raw[end + 4:])[-7:]

    def _finish(self) -> None:
        if not self.complete.done():
            self.complete.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.complete.done():
            self.complete.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is not None and not self.chunked and self.length is None:
            self._finish()  # read-until-close framing: the close is the end
        else:
            self._fail(StreamError(f"connection closed before the response was complete"
                                   f"{': ' + str(exc) if exc else ''}"))

    def response(self) -> Response:
        assert self.head is not None
        status, headers, body_start = self.head
        return Response(status, headers, self.reads, body_start, self.chunked, self.length)


class StreamingClient:
    """POST JSON and collect a complete (streamed) response with a time stamp per read; keep-alive
    connections are pooled (one per request in flight at most). Use inside one running event loop."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, *, connect_timeout_s: float = 10.0,
                 read_timeout_s: float = 120.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.headers = {"Host": parts.netloc, "Accept": "text/event-stream", **(headers or {})}
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: list[_Connection] = []

    async def __aenter__(self) -> StreamingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()

    async def _connect(self) -> tuple[_Connection, bool]:
        """(a connection, whether it is a pooled one)"""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn._reset()
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl), self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise StreamError(f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}") from exc
        return conn, False

    async def post(self, path: str, body: dict[str, Any]) -> tuple[float, Response]:
        """Send; return (perf_counter when the request was written, the complete response)."""
        payload = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = (f"POST {self.prefix}{path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\n\r\n").encode("latin-1") + payload
        for attempt in (1, 2):
            conn, reused = await self._connect()
            assert conn.transport is not None
            sent = _perf()
            conn.transport.write(request)
            try:
                await self._wait(conn)
            except StreamError:
                conn.transport.close()
                # a pooled connection the server closed (keep-alive timeout) while the loop was not looking:
                # nothing came back, so the request was not served; once more on a fresh connection
                if reused and not conn.reads and attempt == 1:
                    continue
                raise
            except BaseException:
                if not conn.complete.done():
                    conn.complete.cancel()  # nobody waits for it any more: the close below must not set it
                conn.transport.close()
                raise
            break
        response = conn.response()
        if "close" in response.headers.get("connection", "").lower() or conn.closed:
            if conn.transport is not None:
                conn.transport.close()
        else:
            self._idle.append(conn)
        return sent, response

    async def _wait(self, conn: _Connection) -> None:
        # a stall, not a slow stream, is an error: the timeout counts from the last read
        since = _perf()
        while True:
            last = conn.reads[-1][0] if conn.reads else since
            remaining = last + self.read_timeout_s - _perf()
            if remaining <= 0:
                raise StreamError(f"no data from {self.host}:{self.port} for {self.read_timeout_s:g} s "
                                  "(stalled stream)")
            done, _ = await asyncio.wait({conn.complete}, timeout=remaining)
            if done:
                conn.complete.result()
                return
