"""Seed baselines/sm121-gb10 and baselines/sm120-rtx-pro-6000 from the figures the seed documents publish.

Each file is marked "imported_from": "<seed doc>": the gate compares against it like any baseline, and the
first `pytest -m sm121 --update-baselines` on real hardware replaces it whole (BaselineStore.update does not
merge into an imported baseline). Kernel records stay null: the kernel snapshots come from real runs only.

    python scripts/gpu/import_seed_baselines.py [BASELINES_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from quantgate.gate.baselines import Baseline, BaselineStore, atomic_write  # noqa: E402

S000 = "seeds/000_39c1d65fe4e1c0c4.txt (Marlin INT4 AutoRound auf SM120/SM121; bench.py, seed 42, temperature 0)"
S000_BENCHY = "seeds/000_39c1d65fe4e1c0c4.txt (llama-benchy 0.3.1, runs=2, INT4 W4A16 + EAGLE3 NST=3)"
S001 = "seeds/001_c18295227799fe22.txt (NVFP4 Qwen3-Coder-30B-A3B on DGX Spark; bench.py --context)"
S001_TURBO = ("seeds/001_c18295227799fe22.txt ('turbo SM121-only': vLLM 0.16.0rc2 Avarok build, VLLM_CUTLASS "
              "v109 Pingpong; a stock vLLM may differ)")
S002 = "seeds/002_2a138f990aa97561.txt (MXFP4 gpt-oss-120b upstream baseline; llama-benchy 0.1.1 at pp2048)"
S003 = "seeds/003_36002993e5ae47d7.txt (NVFP4 Qwen3-Next-80B on DGX Spark; 500-token generation)"

OUT = ("short", "medium", "long")
CTX = {"ctx=0": 0, "ctx=512": 512, "ctx=2K": 2048, "ctx=8K": 8192, "ctx=16K": 16384}


def grid(rows: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    return {f"decode_tps[ctx={CTX[c]},out={o}]": v for c, vals in rows.items() for o, v in zip(OUT, vals, strict=True)}


# (hardware, config id) -> [(source doc, {figure: value})]; a config may take figures from two documents.
TABLE: dict[tuple[str, str], list[tuple[str, dict[str, float]]]] = {
    # --- sm121 (GB10), seed 000 table "DGX Spark" ---
    ("sm121", "sm121-coder-int4"): [
        (S000, {"decode_tps[ctx=0,out=medium]": 86.4, "decode_tps[ctx=0,out=long]": 86.9})],
    ("sm121", "sm121-coder-int4-eagle3-nst3"): [
        (S000, {"decode_tps[ctx=0,out=medium]": 69.1, "decode_tps[ctx=0,out=long]": 94.6})],
    ("sm121", "sm121-coder-int4-w4a8"): [
        (S000, {"decode_tps[ctx=0,out=medium]": 86.0, "decode_tps[ctx=0,out=long]": 86.7})],
    ("sm121", "sm121-coder-nvfp4-fi-cutlass"): [(S001, grid({
        "ctx=0": (37.3, 64.5, 65.0), "ctx=512": (27.1, 63.8, 64.2), "ctx=2K": (19.0, 62.5, 63.0),
        "ctx=8K": (5.9, 57.8, 59.0), "ctx=16K": (3.4, 53.5, 54.8)}))],
    ("sm121", "sm121-coder-nvfp4-fi-cutlass-eagle3-nst1"): [(S001, grid({
        "ctx=0": (30.4, 54.2, 68.1), "ctx=512": (20.5, 52.5, 66.0), "ctx=2K": (15.2, 51.0, 65.2),
        "ctx=8K": (5.7, 44.8, 45.5), "ctx=16K": (3.4, 42.6, 43.8)}))],
    ("sm121", "sm121-coder-nvfp4-vllm-cutlass"): [(S001_TURBO, grid({
        "ctx=0": (39.1, 67.5, 68.0), "ctx=512": (28.2, 66.6, 67.4), "ctx=2K": (19.8, 65.4, 66.1),
        "ctx=8K": (6.1, 60.5, 61.9), "ctx=16K": (3.6, 55.9, 57.2)}))],
    ("sm121", "sm121-coder-nvfp4-vllm-cutlass-eagle3-nst1"): [(S001_TURBO, grid({
        "ctx=0": (33.3, 56.8, 73.9), "ctx=512": (21.6, 54.8, 71.4), "ctx=2K": (15.9, 53.3, 70.8),
        "ctx=8K": (6.0, 46.7, 48.4), "ctx=16K": (3.6, 44.6, 45.9)}))],
    ("sm121", "sm121-coder-fp8-dynamic"): [(S000, {"decode_tps[ctx=0,out=long]": 50.5})],
    ("sm121", "sm121-coder-bf16"): [(S000, {"decode_tps[ctx=0,out=long]": 30.6})],
    ("sm121", "sm121-gpt-oss-120b-mxfp4"): [(S002, {
        "decode_tps[ctx=2048,out=short]": 31.58, "decode_tps[ctx=2048,out=medium]": 31.62,
        "ttft_ms_client[ctx=2048,out=short]": 554.8, "prefill_tps[ctx=2048]": 4340.7,
        "prefill_tps[ctx=512]": 2209.1})],
    ("sm121", "sm121-next-nvfp4-marlin"): [(S003, {"decode_tps[ctx=0,out=long]": 40.2})],
    ("sm121", "sm121-next-nvfp4-marlin-mtp-nst1"): [(S003, {"decode_tps[ctx=0,out=long]": 55.4,
                                                            "acceptance_length": 1.84})],
    ("sm121", "sm121-next-nvfp4-marlin-mtp-nst2"): [(S003, {"decode_tps[ctx=0,out=long]": 59.9,
                                                            "acceptance_length": 2.42})],
    # --- sm120 (RTX PRO 6000), seed 000 table "Spiegel 2" and its llama-benchy table ---
    ("sm120", "sm120-coder-int4"): [
        (S000, {"decode_tps[ctx=0,out=medium]": 210.5, "decode_tps[ctx=0,out=long]": 211.7})],
    ("sm120", "sm120-coder-int4-eagle3-nst3"): [
        (S000, {"decode_tps[ctx=0,out=medium]": 178.0, "decode_tps[ctx=0,out=long]": 298.2}),
        (S000_BENCHY, {
            "decode_tps[ctx=512,out=short]": 137.5, "decode_tps[ctx=512,out=medium]": 133.9,
            "decode_tps[ctx=2048,out=short]": 112.2, "decode_tps[ctx=2048,out=medium]": 108.5,
            "decode_tps[ctx=8192,out=short]": 73.4, "decode_tps[ctx=8192,out=medium]": 72.7,
            "ttft_ms_client[ctx=512,out=short]": 30.0, "ttft_ms_client[ctx=2048,out=short]": 76.0,
            "ttft_ms_client[ctx=8192,out=short]": 305.0,
            "prefill_tps[ctx=512]": 16181.0, "prefill_tps[ctx=2048]": 23333.0,
            "prefill_tps[ctx=8192]": 22632.0})],
    ("sm120", "sm120-coder-int4-w4a8"): [
        (S000, {"decode_tps[ctx=0,out=medium]": 210.5, "decode_tps[ctx=0,out=long]": 211.8})],
    ("sm120", "sm120-coder-nvfp4-fi-cutlass"): [(S000, {"decode_tps[ctx=0,out=medium]": 157.9})],
    ("sm120", "sm120-coder-nvfp4-fi-cutlass-eagle3-nst3"): [(S000, {"decode_tps[ctx=0,out=long]": 183.4})],
    ("sm120", "sm120-coder-fp8-dynamic"): [(S000, {"decode_tps[ctx=0,out=medium]": 135.7})],
    ("sm120", "sm120-coder-fp8-dynamic-eagle3-nst3"): [(S000, {"decode_tps[ctx=0,out=long]": 166.5})],
    ("sm120", "sm120-coder-bf16"): [(S000, {"decode_tps[ctx=0,out=medium]": 140.9})],
    ("sm120", "sm120-coder-bf16-eagle3-nst3"): [(S000, {"decode_tps[ctx=0,out=long]": 147.4})],
}

UNITS = {"decode_tps": ("tok/s", True, True), "prefill_tps": ("tok/s", True, False),
         "ttft_ms_client": ("ms", False, False), "acceptance_length": ("tokens", True, True)}


def figure(name: str, value: float, doc: str) -> dict[str, object]:
    unit, higher, gated = UNITS[name.split("[")[0]]
    return {"unit": unit, "higher_is_better": higher, "source": "imported", "gated": gated, "n": 1,
            "median": value, "mad": None, "cv": None, "min": value, "max": value, "samples": [value],
            "note": f"copied from {doc}"}


SEED_GPUS = {"sm121": "sm121-gb10", "sm120": "sm120-rtx-pro-6000"}  # the seeds' machines


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "baselines"
    store = BaselineStore(root)
    for (marker, cid), parts in sorted(TABLE.items()):
        hw = SEED_GPUS[marker]  # baselines are keyed by the exact GPU model (quantgate.hardware.baseline_key_for)
        figures = {name: figure(name, value, doc) for doc, figs in parts for name, value in figs.items()}
        docs = "; ".join(dict.fromkeys(doc.split(" (")[0] for doc, _ in parts))
        base = Baseline(config_id=cid, hardware=hw, figures=dict(sorted(figures.items())), kernels=None,
                        environment={"note": "figures copied from a hand-made benchmark table; no run of "
                                             "quantgate produced them"},
                        taken_at="", run_id="imported", imported_from=docs)
        atomic_write(store.path(hw, cid), base.to_json())
        print(f"{store.path(hw, cid)}: {len(figures)} figures from {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
