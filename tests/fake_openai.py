"""A scripted OpenAI-compatible server for unit tests of quantgate's own client and gate logic.

Never used as an engine under test: benchmarks and the regression suite only ever talk to real vLLM.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeServer:
    def __init__(self, mode: str = "ok", tokens_per_s: float = 1000.0, port: int = 0, model: str = "m") -> None:
        self.mode = mode
        self.model = model
        self.die_after: int | None = None
        self.died = False
        self.tokens_per_s = tokens_per_s
        # per-chunk timing control (defaults keep the original behaviour): a fixed delay before the first
        # response chunk (API latency), prompt processing at prefill_tps before it, several tokens per
        # content chunk (speculative decoding), and a share of prompt tokens counted as prefix-cache hits
        self.latency_s = 0.0
        self.prefill_tps: float | None = None
        self.tokens_per_chunk = 1
        self.hit_fraction = 0.0
        self.max_new_tokens: int | None = None  # a server-wide cap over max_tokens, as vLLM's generation config
        self.jit_on_max_tokens: int | None = None  # print vLLM's late-compile warning on a request this long
        self.requests: list[dict[str, Any]] = []
        self.counters = {"generation": 0.0, "decode_s": 0.0, "ttft_s": 0.0, "prefill_s": 0.0, "e2e_s": 0.0,
                         "prompt": 0.0, "hits": 0.0, "queries": 0.0, "requests": 0.0}
        self.lock = threading.Lock()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def metrics_text(self) -> str:
        c = self.counters
        lines = [line.replace('model_name="m"', f'model_name="{self.model}"') for line in [
            f'vllm:generation_tokens_total{{model_name="m"}} {c["generation"]}',
            f'vllm:prompt_tokens_total{{model_name="m"}} {c["prompt"]}',
            f'vllm:request_decode_time_seconds_sum{{model_name="m"}} {c["decode_s"]}',
            f'vllm:request_prefill_time_seconds_sum{{model_name="m"}} {c["prefill_s"]}',
            f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {c["ttft_s"]}',
            f'vllm:e2e_request_latency_seconds_sum{{model_name="m"}} {c["e2e_s"]}',
            f'vllm:prefix_cache_hits_total{{model_name="m"}} {c["hits"]}',
            f'vllm:prefix_cache_queries_total{{model_name="m"}} {c["queries"]}',
            f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {c["requests"]}',
            f'vllm:e2e_request_latency_seconds_count{{model_name="m"}} {c["requests"]}',
        ]] + ['vllm:request_decode_time_seconds_sum{model_name="other"} 999']
        return "\n".join(["# HELP fake", *lines]) + "\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._send(200, b"")
                elif self.path == "/metrics":
                    self._send(200, server.metrics_text().encode(), "text/plain")
                elif self.path == "/v1/models":  # behind the key, as vLLM's API routes are
                    expected = os.environ.get("VLLM_API_KEY")
                    if expected and self.headers.get("Authorization") != f"Bearer {expected}":
                        self._send(401, b'{"error": "Unauthorized"}')
                    else:
                        self._send(200, json.dumps({"object": "list", "data": [
                            {"id": server.model, "object": "model", "max_model_len": 4096}]}).encode())
                else:
                    self._send(404, b"{}")

            def _answer(self, body: dict[str, Any]) -> None:
                """Solve 'a + b =' prompts (wrongly when FAKE_ACCURACY_WRONG is set): a scripted model whose
                accuracy the test controls."""
                import re

                found = re.findall(r"(\d+) ([+-]) (\d+)", str(body.get("prompt", "")))
                value = 0
                if found:
                    a, op, b = found[-1]
                    value = int(a) + int(b) if op == "+" else int(a) - int(b)
                if os.environ.get("FAKE_ACCURACY_WRONG"):
                    value += 1
                text = f" {value}\n"
                reply = {"choices": [{"text": text, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 8, "completion_tokens": 2}}
                self._send(200, json.dumps(reply).encode())

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                expected = os.environ.get("VLLM_API_KEY")
                if expected and auth != f"Bearer {expected}":  # as vLLM does with --api-key
                    self._send(401, b'{"error": "Unauthorized"}')
                    return
                server.requests.append({"body": body, "auth": auth})
                keyfile = os.environ.get("FAKE_KEYFILE")
                if keyfile and auth:
                    with server.lock:  # handler threads run concurrently under the concurrency sweep
                        seen = set(json.loads(Path(keyfile).read_text())) if os.path.exists(keyfile) else set()
                        seen.add(auth.removeprefix("Bearer "))
                        Path(keyfile).write_text(json.dumps(sorted(seen)))
                if server.die_after is not None and len(server.requests) > server.die_after:
                    server.died = True
                    self.connection.close()
                    return
                mode = server.mode
                if mode in ("500", "429"):
                    self._send(int(mode), json.dumps({"error": f"fake {mode}"}).encode())
                    return
                if body.get("stream") is False:  # non-streaming: the accuracy workload
                    if os.environ.get("FAKE_ACCURACY_BROKEN"):  # a completion that is not JSON
                        self._send(200, b"<html>proxy error</html>", "text/html")
                        return
                    self._answer(body)
                    return
                n = int(body["max_tokens"])
                prompt = body["prompt"]
                p = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(obj: Any) -> None:
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                    self.wfile.flush()

                pre = server.latency_s + (p / server.prefill_tps if server.prefill_tps else 0.0)
                if pre:
                    time.sleep(pre)
                event({"choices": [{"text": ""}]})  # an empty first chunk is not the first token
                produced = 0 if mode == "zero" else min(n, server.max_new_tokens or n)
                if n == server.jit_on_max_tokens:  # printed by the scripted engine: it lands in the engine log
                    print("(EngineCore pid=1) WARNING 12-02 10:00:01 [jit_monitor.py:140] Triton kernel JIT "
                          "compilation during inference: _topk_forward. This causes a latency spike; consider "
                          "extending warmup to cover this shape/config.", flush=True)
                k = max(1, int(server.tokens_per_chunk))
                for i in range(0, produced, k):
                    step = min(k, produced - i)
                    time.sleep(step / server.tokens_per_s)
                    if mode == "malformed" and i == 1:
                        self.wfile.write(b"data: {not json\n\n")
                        return
                    if mode == "truncated" and i == n // 2:
                        return
                    if mode == "stall" and i == 1:
                        time.sleep(30)
                    event({"choices": [{"text": "".join(f" t{j}" for j in range(i, i + step))}]})
                with server.lock:
                    # server-side figures are computed, not timed: deterministic even on a loaded CI box
                    c = server.counters
                    c["generation"] += produced
                    c["prompt"] += p
                    c["decode_s"] += max(produced - 1, 0) / server.tokens_per_s
                    c["ttft_s"] += 0.01
                    c["prefill_s"] += 0.005
                    c["e2e_s"] += 0.01 + max(produced - 1, 0) / server.tokens_per_s
                    c["queries"] += p
                    c["hits"] += p * server.hit_fraction
                    c["requests"] += 1
                if mode != "no-usage":
                    event({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": produced}})
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler
