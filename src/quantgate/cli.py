"""`quantgate` command line: hardware, kernels, models, run, calibrate."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import hardware as hardware_mod


def _cmd_hardware(args: argparse.Namespace) -> int:
    return hardware_mod.main()


def _cmd_kernels(args: argparse.Namespace) -> int:
    from .kernels import parse_log_file

    path = Path(args.logfile)
    if not path.is_file():
        print(f"quantgate kernels: {path}: no such file", file=sys.stderr)
        return 2
    print(json.dumps(parse_log_file(path).to_dict(), indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import models

    cache = Path(args.cache) if args.cache else None
    specs = args.recipe or ["qwen3-dense"]
    for spec in specs:
        name, _, quant = spec.partition(":")
        table: dict[str, object] = {"recipe": name}
        if quant:
            table["quantization"] = quant
        recipe = models.recipe_from_spec(table, where=f"command line {spec!r}")
        started = time.monotonic()
        path = models.ensure_model(recipe, cache)
        print(f"{spec}: {path} ({time.monotonic() - started:.1f} s)")
    return 0


def _default_suite_args() -> list[str]:
    marker = hardware_mod.marker_for(hardware_mod.detect().id)
    target = ["tests/regression"] if Path("tests/regression").is_dir() else []
    return [*target, "-m", marker]


def _cmd_run(args: argparse.Namespace) -> int:
    """The regression suite on this machine's hardware lane: pytest -m <marker> tests/regression."""
    extra = list(args.pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = [sys.executable, "-m", "pytest", *_default_suite_args(), *extra]
    print("quantgate:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """A/A runs: measure the same configs K times, each in a fresh engine, and turn the spread of the
    per-run medians into per-metric tolerances for this hardware (baselines/<hw>/noise.json), with the
    false-alarm rate and the smallest slowdown the gate catches at those tolerances; then every run judged
    against the stored baseline of its config (another session), at those tolerances and at the gate's."""
    from .baselines import Baseline, BaselineError, BaselineStore, NoiseModel
    from .calibration import Limits, calibrate, cross_session, cross_session_body, cross_table, noise_body, table
    from .matrix import load_matrices
    from .session import Run, Settings
    from .stats import Figure

    if args.runs < 2:
        raise ValueError(f"--runs {args.runs}: an A/A calibration needs at least 2 runs")
    if not 0 < args.power <= 1:
        raise ValueError(f"--power {args.power}: must be in (0, 1]")
    paths = [Path(p) for p in args.matrix] or sorted(Path("fixtures/matrix").glob("*.toml"))
    matrices = load_matrices(paths)
    hw = hardware_mod.detect()
    runs: list[dict[str, Figure]] = []
    stored: dict[str, Baseline | None] = {}
    gate_noise: dict[str, NoiseModel] = {}
    for k in range(args.runs):
        run = Run(matrices, hw, Settings(results_dir=Path(args.results), baselines_dir=Path(args.baselines)))
        if k == 0:  # what the gate compares with today, read before this calibration writes noise.json
            for cid in args.config:
                gate_noise[cid] = run.noise(cid)
                try:
                    stored[cid] = run.baseline(cid)
                except BaselineError as exc:
                    print(f"calibrate: {exc}: not judged across sessions", file=sys.stderr)
                    stored[cid] = None
        figures: dict[str, Figure] = {}
        try:
            for cid in args.config:
                # keyed by config: the same cell of two configs is two figures, not two runs of one
                figures.update({f"{cid}/{name}": fig for name, fig in run.measurement(cid).figures.items()})
                run.release(cid)
        finally:
            run.close()
        runs.append(figures)
        print(f"calibrate: run {k + 1}/{args.runs} done", flush=True)
    limits = Limits(sigmas=args.sigmas, min_tolerance=args.min_tolerance, max_tolerance=args.max_tolerance,
                    power=args.power)
    results = calibrate(runs, limits)
    xs = cross_session(runs, stored, gate_noise, results)
    body = {"hardware": hw.id, "hardware_name": hw.name, "k": args.runs, "configs": args.config,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **noise_body(results, limits),
            "cross_session": cross_session_body(xs, stored)}
    path = BaselineStore(Path(args.baselines)).write_noise(hw.baseline_key, body)
    print(table(results, limits.power))
    print()
    print(cross_table(xs, stored))
    print(f"noise model written: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hardware", help="print the detected hardware id and facts").set_defaults(func=_cmd_hardware)
    p = sub.add_parser("kernels", help="print the kernel-selection record of a vLLM log as JSON")
    p.add_argument("logfile")
    p.set_defaults(func=_cmd_kernels)
    p = sub.add_parser("models", help="synthesize (and cache) models: RECIPE[:QUANT] ...")
    p.add_argument("recipe", nargs="*", help="e.g. qwen3-dense qwen3-dense:w4a16 qwen3-moe")
    p.add_argument("--cache", default=None, help="model cache folder (default $QUANTGATE_MODEL_CACHE)")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("run", help="run the regression suite for this machine's hardware (extra args go to pytest)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("calibrate", help="A/A runs that set the per-metric tolerances for this hardware")
    p.add_argument("--config", action="append", default=None,
                   help="config ids (default: bf16 and w8a8, both served on every CPU kind)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sigmas", type=float, default=3.0)
    p.add_argument("--min-tolerance", type=float, default=0.05)
    p.add_argument("--max-tolerance", type=float, default=0.60)
    p.add_argument("--power", type=float, default=0.80,
                   help="share of A/A trials a slowdown must fail in to count as caught (default 0.8)")
    p.add_argument("--matrix", action="append", default=[])
    p.add_argument("--baselines", default="baselines")
    p.add_argument("--results", default="results/calibrate")
    p.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.pytest_args = unknown + list(args.pytest_args)  # `quantgate run -v -k w8a8` goes to pytest
    if getattr(args, "config", None) is None and args.command == "calibrate":
        args.config = ["bf16", "w8a8"]
    from .matrix import MatrixError

    try:
        return int(args.func(args))
    except (MatrixError, OSError, ValueError) as exc:
        print(f"quantgate {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
