"""The model cache: each recipe built once (tokenizer, weights, quantization) in a worker process, published
atomically under its digest, and found again by later runs and other processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config.environment import Environment, from_env
from .recipes import (
    BOS_ID,
    BUILDER_VERSION,
    CHAT_TEMPLATE,
    DEFAULT_BUILD,
    EOS_ID,
    EOS_TOKEN,
    MANIFEST,
    PAD_ID,
    PAD_TOKEN,
    QUANT_IGNORE,
    QUANT_SCHEMES,
    SPECIAL_TOKENS,
    TOKENIZER_FILES,
    Log,
    ModelError,
    ModelRecipe,
    TokenizerRecipe,
    _check_eagle_target,
    recipe_from_name,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: rely on the rename race alone
    fcntl = None  # type: ignore[assignment]

BUILD_TIMEOUT_S = 1800


_HERE = Path(__file__).resolve().parent


BUILD_WORKER = _HERE / "_build_model.py"


QUANTIZE_WORKER = _HERE / "_quantize_model.py"


def default_cache_dir(env: Environment | None = None) -> Path:
    return (env or from_env()).model_cache


def cached_model(recipe: ModelRecipe, cache_dir: Path | None = None) -> Path | None:
    """The recipe's folder if it is already built, else None (builds nothing)."""
    path = Path(cache_dir or default_cache_dir()) / recipe.dir_name
    return path if _complete(path) else None


def _checkout_root() -> Path | None:
    """The repository quantgate runs from when it is a source checkout (an editable install), else None."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "quantgate").is_dir() else None


def find_quant_python() -> Path | None:
    """The quantizer's interpreter: $QUANTGATE_QUANT_PYTHON, else .venv-quant/bin/python beside the running
    interpreter's venv (<repo>/.venv -> <repo>/.venv-quant) or in quantgate's own checkout. Never the working
    directory or its parents: a `.venv-quant` planted in /tmp would run as the quantizer."""
    path = from_env().quant_python
    if path is not None:
        if not path.exists():
            raise ModelError(f"QUANTGATE_QUANT_PYTHON={path} does not exist")
        return path
    for folder in (Path(sys.prefix).resolve().parent, _checkout_root()):
        candidate = folder / ".venv-quant" / "bin" / "python" if folder is not None else None
        if candidate is not None and candidate.exists():
            return candidate
    return None


def _complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


@contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """Exclusive flock on `path` (held until exit); yields False where flock does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield False
        return
    from ..locks import locked

    with locked(path):
        yield True


def _temp_dirs(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".tmp-{final.name}-*"))


def _publish(final: Path, build: Callable[[Path], dict[str, Any]], log: Log | None) -> bool:
    """Build into a temp folder beside `final`, then rename it into place; False if another builder
    published it first."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _lock(parent / ".locks" / f"{final.name}.lock") as exclusive:
        if _complete(final):
            return False
        if exclusive:
            # We hold the only right to build `final`: any temp folder is from a killed builder, and a folder
            # without a manifest was damaged after publication.
            for stale in _temp_dirs(final):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():
                _discard(final)
        if log:
            log(f"building {final.name} ...")
        tmp = parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        t0 = time.perf_counter()
        try:
            info = build(tmp)
            info["build_seconds"] = round(time.perf_counter() - t0, 3)
            info["built_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            _write_json(tmp / MANIFEST, info)  # last: marks the folder complete
            try:
                os.replace(tmp, final)
            except OSError:
                if _complete(final):  # lost a rename race (no flock here): the winner's copy is as good
                    shutil.rmtree(tmp, ignore_errors=True)
                    return False
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if log:
        log(f"built {final.name} in {info['build_seconds']:.1f} s")
    return True


def _discard(path: Path) -> None:
    trash = path.parent / f".tmp-{path.name}-trash-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _run_worker(python: Path | str, script: Path, job: Mapping[str, Any], *, cwd: Path, log_as: Path) -> dict:
    """Run a worker script; return its QUANTGATE_RESULT, or raise ModelError with the tail of its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0",
               HF_HUB_DISABLE_TELEMETRY="1")
    if str(python) != sys.executable:  # another venv: do not leak this one's paths into it
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(key, None)
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(script), json.dumps(job)]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=BUILD_TIMEOUT_S)
        output, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout
        output = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        output, rc = output + f"\n[timed out after {BUILD_TIMEOUT_S} s]", -1
    except OSError as exc:
        raise ModelError(f"cannot run {python}: {exc}") from None
    for line in reversed(output.splitlines()):
        if rc == 0 and line.startswith("QUANTGATE_RESULT "):
            result: dict = json.loads(line.split(" ", 1)[1])
            return result
    log_as.parent.mkdir(parents=True, exist_ok=True)
    log_as.write_text(f"$ {' '.join(cmd)}\n{output}", encoding="utf-8")
    tail = "\n".join("    " + ln for ln in output.strip().splitlines()[-15:])
    raise ModelError(f"{script.name} failed (exit {rc}) building {log_as.stem}:\n{tail}\nfull log: {log_as}")


def ensure_tokenizer(
    vocab_size: int = 4096, cache_dir: Path | None = None, *, log: Log | None = None,
) -> Path:
    """The shared tokenizer folder for `vocab_size`, trained on first use."""
    cache = Path(cache_dir or default_cache_dir())
    recipe = TokenizerRecipe(vocab_size=vocab_size)
    final = cache / "tokenizers" / recipe.dir_name

    def build(tmp: Path) -> dict[str, Any]:
        job = {
            "kind": "tokenizer", "out": str(tmp), "vocab_size": vocab_size, "seed": recipe.seed,
            "corpus_lines": recipe.corpus_lines, "special_tokens": list(SPECIAL_TOKENS),
            "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "chat_template": CHAT_TEMPLATE,
        }
        result = _run_worker(sys.executable, BUILD_WORKER, job, cwd=tmp / ".scratch",
                             log_as=cache / ".logs" / f"{final.name}.log")
        shutil.rmtree(tmp / ".scratch", ignore_errors=True)
        return {"kind": "tokenizer", "digest": recipe.digest(), "recipe": dataclasses.asdict(recipe),
                **result}

    if not _complete(final):
        _publish(final, build, log)
    return final


def _copy_tokenizer(src: Path, dst: Path, max_length: int) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, dst / name)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["model_max_length"] = max_length
    _write_json(cfg_path, cfg)


def _generation_config() -> dict[str, Any]:
    return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}


def _manifest(recipe: ModelRecipe, **extra: Any) -> dict[str, Any]:
    return {"kind": "model", "builder_version": BUILDER_VERSION, "digest": recipe.digest(),
            "recipe": recipe.to_dict(), **extra}


def _ensure(recipe: ModelRecipe, cache: Path, log: Log | None) -> tuple[Path, bool]:
    final = cache / recipe.dir_name
    if _complete(final):
        return final, False
    _check_eagle_target(recipe)
    logs = cache / ".logs" / f"{final.name}.log"

    if recipe.quantization is None:
        tok = ensure_tokenizer(recipe.vocab_size, cache, log=log)

        def build(tmp: Path) -> dict[str, Any]:
            job = {"kind": "model", "out": str(tmp), "recipe": recipe.to_dict(),
                   "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
            if recipe.train is not None:
                job["tokenizer"] = str(tok)
            result = _run_worker(sys.executable, BUILD_WORKER, job, cwd=tmp / ".scratch", log_as=logs)
            shutil.rmtree(tmp / ".scratch", ignore_errors=True)
            _copy_tokenizer(tok, tmp, recipe.max_position_embeddings)
            _write_json(tmp / "generation_config.json", _generation_config())
            return _manifest(recipe, tokenizer=tok.name, **result)
    else:
        python = find_quant_python()
        if python is None:
            raise ModelError(
                f"model '{recipe.name}' with quantization '{recipe.quantization}' needs llmcompressor's "
                f"interpreter: run scripts/setup-cpu.sh (creates .venv-quant) or set QUANTGATE_QUANT_PYTHON")
        base, _ = _ensure(recipe.base(), cache, log)

        def build(tmp: Path) -> dict[str, Any]:
            job = {"base": str(base), "out": str(tmp), "scheme": QUANT_SCHEMES[str(recipe.quantization)],
                   "ignore": list(QUANT_IGNORE)}
            result = _run_worker(python, QUANTIZE_WORKER, job, cwd=tmp / ".scratch", log_as=logs)
            shutil.rmtree(tmp / ".scratch", ignore_errors=True)
            # The same tokenizer and stop ids as the base.
            for name in (*TOKENIZER_FILES, "generation_config.json"):
                shutil.copyfile(base / name, tmp / name)
            return _manifest(recipe, base=base.name, scheme=QUANT_SCHEMES[str(recipe.quantization)], **result)

    return final, _publish(final, build, log)


def ensure_model(recipe: ModelRecipe, cache_dir: Path | None = None, *, log: Log | None = None) -> Path:
    """The folder of `recipe`, built on first use (a quantized recipe builds its bf16 base first).

    Safe to call from several processes at once (pytest-xdist): one builds, the others wait and reuse.
    """
    path, _ = _ensure(recipe, Path(cache_dir or default_cache_dir()), log)
    return path


@dataclass(frozen=True)
class BuildReport:
    recipe: ModelRecipe
    path: Path
    built: bool  # False: it was in the cache already
    seconds: float


def build_all(
    names: Iterable[str | ModelRecipe] | None = None, cache_dir: Path | None = None, *,
    log: Log | None = print,
) -> list[BuildReport]:
    """Build (or find) each model, for `quantgate models build`.

    Names are recipe names, optionally with ':quantization' ('qwen3-dense:w4a16'); the default is every
    named recipe in bf16.
    """
    cache = Path(cache_dir or default_cache_dir())
    reports = []
    for item in names if names is not None else DEFAULT_BUILD:
        recipe = item if isinstance(item, ModelRecipe) else recipe_from_name(item)
        t0 = time.perf_counter()
        path, built = _ensure(recipe, cache, log)
        report = BuildReport(recipe, path, built, time.perf_counter() - t0)
        reports.append(report)
        if log:
            verb = "built " if built else "cached"
            log(f"{verb} {recipe.name}:{recipe.label} -> {path} ({report.seconds:.1f} s)")
    return reports
