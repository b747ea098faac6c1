"""${VAR} in a matrix's model paths: expanded when the file loads; every variable of a config that runs on this
machine must be set."""

from __future__ import annotations

import os
import re
from typing import Any

from .records import EngineConfig, Matrix, MatrixError

_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand(value: str, where: str = "", key: str = "path", *, strict: bool = True) -> str:
    """Model paths may name the user's settings: ${QUANTGATE_MODELS}/Qwen3-Coder-30B-A3B-AWQ. An unset
    variable is an error: left in as text it would name a folder nobody meant. Model paths are not strict
    here: a GPU config's ${QUANTGATE_MODELS} need only be set where it runs (check_variables)."""
    for braced, bare in _VAR.findall(value):
        name = braced or bare
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise MatrixError(f"{where}: {key} {value!r}: ${{{name}}} is not a variable name")
        if strict and name not in os.environ:
            raise MatrixError(f"{where}: {key} {value!r} names ${name}, which is not set in the environment")
    if "\0" in value:
        raise MatrixError(f"{where}: {key} {value!r} contains a NUL character")
    return os.path.expanduser(os.path.expandvars(value))


def unset_variables(cfg: EngineConfig) -> list[tuple[str, str]]:
    """(key, variable) for each ${VAR} a config's model paths name that was not set when it was loaded
    (expandvars leaves those as text)."""
    paths: list[tuple[str, Any]] = [("model", cfg.model)]
    if cfg.speculative is not None:
        paths.append(("speculative model", cfg.speculative.model))
    return [(key, braced or bare) for key, value in paths if isinstance(value, str)
            for braced, bare in _VAR.findall(value)]


def check_variables(matrices: tuple[Matrix, ...], hardware_id: str) -> None:
    """Every config that runs on this machine has its model path variables set."""
    for matrix in matrices:
        for cfg in matrix.for_hardware(hardware_id):
            for key, name in unset_variables(cfg):
                raise MatrixError(f"{cfg.source}: {key} names ${name}, which is not set in the environment "
                                  f"(the config runs on {hardware_id})")
