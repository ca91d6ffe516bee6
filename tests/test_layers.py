"""The package's layers: imports only go down, no private name crosses a module, no circle.

The order (bottom first) is written down in docs/development.md ("Package layers"); this test
is what keeps it. Every import counts, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vdc_lake

PACKAGE = Path(vdc_lake.__file__).resolve().parent
# Bottom first. A module may import from its own layer's package and from any layer below.
LAYERS = ("base", "kernels", "config", "fileops", "catalog", "scale", "models", "stages", "review", "effects", "cli")
BASE_MODULES = {"vdc_lake", "vdc_lake.errors", "vdc_lake.progress"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in BASE_MODULES:
        return "base"
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer: put it in one of {LAYERS} (and in docs/development.md)")
    return parts[1]


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every vdc_lake import in path."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test).endswith("TYPE_CHECKING") for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "vdc_lake"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vdc_lake":
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "sql" not in p.relative_to(PACKAGE).parts}


def graph() -> dict[str, set[str]]:
    all_modules = modules()
    edges: dict[str, set[str]] = {m: set() for m in all_modules}
    for name, path in all_modules.items():
        for target, names, _ in imports(path):
            for n in names or [None]:
                full = f"{target}.{n}" if n and f"{target}.{n}" in all_modules else target
                if full != name:
                    edges[name].add(full)
    return edges


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_only_go_down():
    upward = []
    for name, path in modules().items():
        mine = LAYERS.index(layer_of(name))
        for target, _, line in imports(path):
            if LAYERS.index(layer_of(target)) > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer_of(name)}) imports {target}")
    assert upward == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {n} from {target}"
               for name, path in modules().items() for target, names, line in imports(path)
               for n in names if n.startswith("_") and n != "__version__"]
    assert private == []


def test_no_import_circle():
    edges = graph()
    # package __init__ files that re-export their own modules are not circles
    edges = {m: {t for t in ts if not (m.startswith(t + ".") or t.startswith(m + ".") and m.count(".") < t.count("."))}
             for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in edges and not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if not state.get(node):
            visit(node, [node])
    assert cycles == []


def test_the_layer_order_is_the_one_docs_development_md_writes_down():
    page = (PACKAGE.parent / "docs" / "development.md").read_text(encoding="utf-8")
    section = page.split("## Package layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = [row.split("`")[1].rstrip("/").removesuffix(".py") for row in rows]
    assert documented[0] == "errors" and documented[1:] == list(LAYERS[1:])
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "sql"}
    assert packages == set(LAYERS[1:])
