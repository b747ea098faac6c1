"""quantgate's modules form a graph without cycles, deferred (function-level) imports included: a cycle kept
alive by an import inside a function once left Matrix's workload settings as untyped dicts. And no module is
longer than MAX_LINES: a 790-line plugin and a 700-line session were what made every change touch everything."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "quantgate"
MAX_LINES = 450


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, tree: ast.AST) -> set[str]:
    """quantgate modules that `module` imports anywhere in its body, except under `if TYPE_CHECKING:`."""
    out: set[str] = set()
    package = module.rsplit(".", 1)[0] if "." in module else module
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("quantgate"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)  # `from . import engine`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("quantgate"))
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {name: {t for t in _imports(name, tree) if t in modules and t != name}
            for name, tree in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        colour[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                iters.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_quantgate_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "quantgate.config.matrix" in graph and "quantgate.session" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def too_long(root: Path = PACKAGE, limit: int = MAX_LINES) -> dict[str, int]:
    """Modules (paths under the package) longer than `limit` lines, with their length."""
    lengths = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in root.rglob("*.py")}
    return {path: n for path, n in sorted(lengths.items()) if n > limit}


def test_the_checker_finds_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "short.py").write_text("x = 1\n" * 3)
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * 4)
    assert too_long(tmp_path, limit=3) == {"sub/long.py": 4}


def test_no_module_is_over_the_line_limit() -> None:
    long = too_long()
    assert not long, f"modules over {MAX_LINES} lines (split them): " + ", ".join(
        f"{path} ({n})" for path, n in long.items())
