"""The reading path stays readable: small core modules, no import circles, a narrow engine contract."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import orthrus_min
from orthrus_min import engine

PACKAGE = Path(orthrus_min.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, at any depth of its code (a function-level import counts)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    # A module importing its own package (`from .. import x` inside a sub-package) is not an edge of the circle test.
    return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}


def test_core_modules_are_at_most_400_lines():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"core modules over 400 lines: {long}"


def test_no_import_circle_in_the_package():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: imports_of(p, set(files)) for m, p in files.items()}
    circles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_model_file_is_the_network():
    source = (PACKAGE / "model.py").read_text()
    for io in ("json", "safetensors", "open(", "huggingface_hub", "Path("):
        assert io not in source, f"model.py mentions {io!r}: config parsing and file I/O live in config.py / checkpoint.py"


def test_decode_takes_at_most_8_parameters_and_the_engine_keeps_no_state():
    assert len(inspect.signature(engine.decode).parameters) <= 8
    mutable = {name for name, value in vars(engine).items()
               if not name.startswith("__") and isinstance(value, (dict, list, set, bytearray))}
    assert not mutable, f"module-level mutable state in engine.py: {mutable}"
