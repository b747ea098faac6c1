"""quantgate.config.environment: the one home of QUANTGATE_* variables, its checks, and the docs table that
must list every variable (docs/settings.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from quantgate.config.environment import Environment, EnvVarError, from_env, markdown_table, variable

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "src" / "quantgate"
HOME = PACKAGE / "config" / "environment.py"
# QUANTGATE_ names that are not settings: a worker script's result line, a user's own matrix variable
NOT_SETTINGS = {"QUANTGATE_RESULT", "QUANTGATE_MODELS"}


def test_defaults_and_blank_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    env = from_env({"QUANTGATE_LAUNCHER": "  ", "QUANTGATE_TORCH_INDEX": ""})
    assert env == Environment()
    assert env.launcher == "local" and env.progress == "auto" and env.inject_slowdown is None
    assert env.model_cache == Path("/home/someone/.cache/quantgate/models")
    assert env.torch_index == "https://download.pytorch.org/whl/cpu"


def test_values_are_parsed() -> None:
    env = from_env({"QUANTGATE_LAUNCHER": "Container", "QUANTGATE_CONTAINER_ARGS": "--shm-size 32g -e 'A=1 2'",
                    "QUANTGATE_ALLOW_BUSY_GPU": "1", "QUANTGATE_INJECT_SLOWDOWN": "0.05",
                    "QUANTGATE_GPU_LOCK_DIR": "/tmp/locks", "QUANTGATE_PROGRESS": "off"})
    assert env.launcher == "container" and env.container_args == ("--shm-size", "32g", "-e", "A=1 2")
    assert env.allow_busy_gpu is True and env.inject_slowdown == 0.05
    assert env.gpu_lock_dir == Path("/tmp/locks") and env.progress == "off"


@pytest.mark.fault("settings", "a QUANTGATE_* variable with a value quantgate cannot use",
                   "one line naming the variable, the value and the accepted values")
@pytest.mark.parametrize(("name", "value", "fix"), [
    ("QUANTGATE_LAUNCHER", "k8s", "use local, container or attach"),
    ("QUANTGATE_CONTAINER_RUNTIME", "lxc", "use podman or docker"),
    ("QUANTGATE_PROGRESS", "loud", "use auto, rich, plain or off"),
    ("QUANTGATE_ALLOW_BUSY_GPU", "yes", "use 1 (on) or 0 (off)"),
    ("QUANTGATE_CONTAINER_ALLOW_UNSAFE", "true", "use 1 (on) or 0 (off)"),
    ("QUANTGATE_INJECT_SLOWDOWN", "2", "between 0 and 0.9"),
    ("QUANTGATE_INJECT_SLOWDOWN", "fast", "a fraction such as 0.05"),
])
def test_bad_value_is_one_line_naming_it(name: str, value: str, fix: str) -> None:
    with pytest.raises(EnvVarError) as info:
        from_env({name: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}={value!r}: ") and fix in message


def test_unsplittable_container_args() -> None:
    with pytest.raises(EnvVarError, match="^QUANTGATE_CONTAINER_ARGS: No closing quotation"):
        from_env({"QUANTGATE_CONTAINER_ARGS": "-e 'A=1"})


def test_api_key_never_in_repr() -> None:
    env = from_env({"QUANTGATE_ATTACH_API_KEY": "sekret-123"})
    assert env.attach_api_key == "sekret-123" and "sekret-123" not in repr(env)


def test_variable_names() -> None:
    assert variable("invoked_as") == "QUANTGATE_INVOKED_AS"
    with pytest.raises(KeyError):
        variable("invoked")


def test_docs_table_lists_every_variable() -> None:
    """docs/settings.md holds the generated table as is: a new field without its row fails here."""
    docs = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert markdown_table() in docs, "docs/settings.md is stale: python -m quantgate.config.environment"
    for name in (variable(f) for f in Environment.__dataclass_fields__):
        assert f"`{name}`" in docs


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_quantgate_name_in_the_code_is_a_setting() -> None:
    """A QUANTGATE_* name written anywhere in src (a message, a docstring) is a field of Environment: a
    variable read or named outside it would go unchecked and undocumented."""
    known = {variable(f) for f in Environment.__dataclass_fields__} | NOT_SETTINGS
    found = {m for path in _sources() for m in re.findall(r"QUANTGATE_[A-Z0-9_]*[A-Z0-9]", path.read_text())}
    assert found - known == set()


def _reads_environ(tree: ast.AST) -> list[str]:
    """QUANTGATE_* string constants handed to os.environ / os.getenv in a module."""
    hits = []
    for node in ast.walk(tree):
        args: list[ast.expr] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr == "getenv" or (node.func.attr in ("get", "pop", "setdefault")
                                               and "environ" in ast.unparse(node.func.value))):
            args = list(node.args[:1])
        elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            args = [node.slice]
        hits += [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                 and a.value.startswith("QUANTGATE_")]
    return hits


def test_only_the_environment_module_reads_quantgate_variables() -> None:
    reads = {str(p.relative_to(PACKAGE)): _reads_environ(ast.parse(p.read_text())) for p in _sources() if p != HOME}
    assert {k: v for k, v in reads.items() if v} == {}
    assert _reads_environ(ast.parse('import os\nos.environ.get("QUANTGATE_X")\nos.environ["QUANTGATE_Y"]\n'
                                    'os.getenv("QUANTGATE_Z")')) == ["QUANTGATE_X", "QUANTGATE_Y", "QUANTGATE_Z"]
