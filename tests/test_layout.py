"""The package's shape holds: imports run one way (cli -> app -> server -> chat -> tools -> context -> billing ->
store -> the shared bottom), the client library stands apart, no module imports itself back through a cycle, and no
module grows past the size a reader can hold. Read from the source with `ast`, so a new import against the direction
fails here before it lands (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent

# Higher imports lower, never the reverse. The client is a layer of its own: see test_client_stands_apart.
LAYERS = {
    "gateway.cli": 8,
    "gateway.__main__": 9,
    "gateway.app": 7,
    "gateway.server": 6,
    "gateway.chat": 5,
    "gateway.tools": 4,
    "gateway.context": 3,
    "gateway.billing": 2,
    "gateway.store": 1,
    "gateway.settings": 0,
    "gateway.clock": 0,
    "gateway.errors": 0,
    "gateway.protocol": 0,
    "gateway.protocol_tools": 0,
    "gateway.confine": 0,
    "gateway.frame_json": 0,
}
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = ("gateway", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every gateway module `path` imports, anywhere in the file (also inside functions and TYPE_CHECKING)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            found.add(source)
            # `from gateway.server import queries` imports a module, not a name: count the module.
            found.update(f"{source}.{alias.name}" for alias in node.names if is_module(f"{source}.{alias.name}"))
    return {name for name in found if name == "gateway" or name.startswith("gateway.")}


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (ROOT / relative).with_suffix(".py").exists() or (ROOT / relative / "__init__.py").exists()


def layer_of(name: str) -> tuple[str, int] | None:
    for prefix, rank in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return prefix, rank
    return None


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def test_imports_run_one_way() -> None:
    wrong: list[str] = []
    for name, path in all_modules().items():
        if name == "gateway" or name.startswith("gateway.client"):
            continue
        here = layer_of(name)
        assert here is not None, f"{name} belongs to no layer: add its package to LAYERS and to ARCHITECTURE.md"
        for target in imports_of(path):
            there = layer_of(target)
            if target == "gateway" or (there is None and not target.startswith("gateway.client")):
                continue
            if target.startswith("gateway.client"):
                if here[0] != "gateway.cli":
                    wrong.append(f"{name} imports the client library ({target}); only the CLI may")
                continue
            assert there is not None
            if there[1] > here[1] or (there[1] == here[1] and there[0] != here[0] and here[1] != 0):
                wrong.append(f"{name} ({here[0]}) imports {target} ({there[0]}), against the direction")
    assert wrong == []


def test_client_stands_apart() -> None:
    for name, path in all_modules().items():
        if name.startswith("gateway.client"):
            strays = [t for t in imports_of(path) if t != "gateway" and not t.startswith("gateway.client")]
            assert strays == [], f"{name} imports {strays}: the client library must not load the server"
    # And at run time: importing it loads none of the server's heavy dependencies.
    heavy = "('sqlalchemy', 'anthropic', 'tiktoken', 'alembic')"
    probe = f"import sys, gateway.client; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_no_import_cycles() -> None:
    modules = all_modules()
    graph = {name: {t for t in imports_of(path) if t in modules and t != name} for name, path in modules.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of logic; drop package -> own child edges.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_modules_stay_readable() -> None:
    long = {name: n for name, path in all_modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concern (at most {MAX_LINES} lines each): {long}"


def test_every_package_says_what_it_owns() -> None:
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{init.parent.name}/__init__.py must say what it owns and may import"
