"""quantgate.workload.streaming: HTTP framing and SSE lines rebuilt from stamped reads, pooling, stalls, early close."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pytest

from quantgate.workload.streaming import StreamError, StreamingClient

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> dict:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    body = await reader.readexactly(int(headers["content-length"]))
    return {"line": lines[0], "headers": headers, "body": json.loads(body)}


def _chunked(events: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def _run(script: Script, client_code: Callable[[StreamingClient], Awaitable[object]], **kw: float) -> object:
    async def main() -> object:
        connections = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            try:
                await script(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with StreamingClient(f"http://127.0.0.1:{port}/prefix", {"Authorization": "Bearer k"},
                                       **kw) as client:
                return await client_code(client), len(connections)
        finally:
            server.close()

    return asyncio.run(main())


EVENTS = [b'data: {"choices": [{"text": " a"}]}\n\n', b'data: {"choices": [{"text": " b"}]}\n\n',
          b"data: [DONE]\n\n"]


def test_chunked_response_split_at_every_byte_keeps_lines_and_times() -> None:
    seen: list[dict] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _request(reader))
        for i, byte in enumerate(_chunked(EVENTS)):  # one byte per write, a pause every 40 bytes
            writer.write(bytes([byte]))
            await writer.drain()
            if i % 40 == 0:
                await asyncio.sleep(0.002)

    async def client_code(client: StreamingClient) -> object:
        sent, resp = await client.post("/v1/completions", {"prompt": [1, 2]})
        return sent, resp

    (sent, resp), _ = _run(script, client_code)
    assert seen[0]["line"] == "POST /prefix/v1/completions HTTP/1.1"
    assert seen[0]["headers"]["authorization"] == "Bearer k" and seen[0]["body"] == {"prompt": [1, 2]}
    assert resp.status == 200 and len(resp.reads) > 10  # really arrived in pieces
    lines = list(resp.lines())
    assert [text for _, text in lines] == [EVENTS[0][:-2].decode(), "", EVENTS[1][:-2].decode(), "",
                                           "data: [DONE]", ""]
    times = [t for t, _ in lines]
    assert times == sorted(times) and times[0] > sent
    # each line is stamped with the read that brought its last byte: not all the same, not the first read's
    assert times[-1] > times[0] and times[0] > resp.reads[0][0]


def test_keep_alive_connection_is_reused_and_error_bodies_are_read_by_length() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(_chunked(EVENTS))
        await _request(reader)
        body = b'{"error": "too many"}'
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await reader.read()  # keep the connection open: the client must not wait for a close

    async def client_code(client: StreamingClient) -> object:
        _, first = await client.post("/v1/completions", {})
        _, second = await client.post("/v1/completions", {})
        return first.status, second.status, second.text()

    (first, second, text), connections = _run(script, client_code, read_timeout_s=5)
    assert (first, second, text) == (200, 429, '{"error": "too many"}')
    assert connections == 1


def test_http10_body_ends_at_close() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + b"".join(EVENTS))

    async def client_code(client: StreamingClient) -> object:
        _, resp = await client.post("/v1/completions", {})
        return [line for _, line in resp.lines() if line]

    lines, _ = _run(script, client_code)
    assert lines == [EVENTS[0][:-2].decode(), EVENTS[1][:-2].decode(), "data: [DONE]"]


def test_chunked_stream_closed_early_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(_chunked(EVENTS)[:-20])  # no terminating chunk

    async def client_code(client: StreamingClient) -> object:
        return await client.post("/v1/completions", {})

    with pytest.raises(StreamError, match="closed before the response was complete"):
        _run(script, client_code)


def test_a_stalled_stream_times_out_from_the_last_read() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        data = _chunked(EVENTS)
        for i in range(6):  # a slow but live stream: 6 x 0.15 s, longer than the 0.4 s read timeout in all
            writer.write(data[i * 20:(i + 1) * 20])
            await writer.drain()
            await asyncio.sleep(0.15)
        await asyncio.sleep(5)  # then nothing

    async def client_code(client: StreamingClient) -> object:
        return await client.post("/v1/completions", {})

    start = time.monotonic()
    with pytest.raises(StreamError, match="stalled stream"):
        _run(script, client_code, read_timeout_s=0.4)
    assert 0.75 + 0.4 <= time.monotonic() - start < 4.0  # last read at ~0.75 s, then the timeout


def test_unreachable_server_is_a_clear_error() -> None:
    async def main() -> None:
        async with StreamingClient("http://127.0.0.1:9", connect_timeout_s=2) as client:
            await client.post("/v1/completions", {})

    with pytest.raises(StreamError, match="cannot connect to 127.0.0.1:9"):
        asyncio.run(main())
    with pytest.raises(ValueError, match="not an http"):
        StreamingClient("ftp://x")


def test_a_pooled_connection_closed_by_the_server_unseen_is_retried_once_on_a_fresh_one() -> None:
    served: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_connection = not served
        await _request(reader)
        served.append(1)
        writer.write(_chunked(EVENTS))
        await writer.drain()
        if first_connection:
            await _request(reader)  # the keep-alive race: the request arrives as the server closes
            return
        await reader.read()

    async def client_code(client: StreamingClient) -> object:
        _, first = await client.post("/v1/completions", {})
        _, second = await client.post("/v1/completions", {})
        return first.status, second.status, [line for _, line in second.lines() if line][-1]

    (first, second, last), connections = _run(script, client_code, read_timeout_s=5)
    assert (first, second, last) == (200, 200, "data: [DONE]")
    assert connections == 2 and len(served) == 2


def test_a_fresh_connection_closed_without_an_answer_is_not_retried() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)  # then close: nothing sent

    async def client_code(client: StreamingClient) -> object:
        return await client.post("/v1/completions", {})

    with pytest.raises(StreamError, match="closed before"):
        _run(script, client_code, read_timeout_s=5)
