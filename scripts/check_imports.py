"""Fail on an import cycle between our modules, or on an import arrow that runs the wrong way.

Run as ``python scripts/check_imports.py`` (``make test`` does). It reads the
sources with :mod:`ast` and imports nothing, so it works on a broken tree too.

Every ``import`` counts, also those inside functions (a lazy import that
hides a cycle is still a cycle); only imports under ``if TYPE_CHECKING:`` are
left out, because they never run.

The layers, from the bottom: ``wire`` imports nothing of ours; ``crypto`` and
``engine`` never reach up into the daemon; the data plane never reaches the
daemon either; and the gateway (``ikev1d``) uses the demo and test rig
(``ikev1d_lab``) only for the ``demo`` command of its command line.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("ikev1d", "ikev1d_lab")

# (importer prefix, imported prefix): an arrow that must not exist.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("ikev1d.errors", "ikev1d."),
    ("ikev1d.wire", "ikev1d."),
    ("ikev1d.crypto", "ikev1d.engine"),
    ("ikev1d.crypto", "ikev1d.daemon"),
    ("ikev1d.crypto", "ikev1d.dataplane"),
    ("ikev1d.engine", "ikev1d.daemon"),
    ("ikev1d.engine", "ikev1d.dataplane"),
    ("ikev1d.engine", "ikev1d.cli"),
    ("ikev1d.dataplane", "ikev1d.daemon"),
    ("ikev1d.dataplane", "ikev1d.cli"),
    ("ikev1d.config", "ikev1d.engine"),
    ("ikev1d.config", "ikev1d.daemon"),
    ("ikev1d.daemon", "ikev1d.cli"),
    ("ikev1d.", "ikev1d_lab"),
)
# Arrows allowed although a rule above forbids them, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("ikev1d.cli", "ikev1d_lab.demo"): "`ikev1d demo` runs the demo, imported on demand",
    ("ikev1d.wire.errors", "ikev1d.errors"): "the exception root, which imports nothing",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The modules ``tree`` imports at run time, absolute."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import mod` imports the submodule, `from mod import name` the module.
                yield f"{base}.{alias.name}"
                yield base + "?"
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    paths = [p for pkg in PACKAGES for p in sorted((SRC / pkg).rglob("*.py"))]
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        found = set(_imports(tree, name, path.name == "__init__.py"))
        for target in found:
            if target.endswith("?"):
                # The module itself, unless the names imported from it are its submodules.
                target = target[:-1]
                if any(t.startswith(target + ".") and t in modules for t in found):
                    continue
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _covers(prefix: str, module: str) -> bool:
    if prefix.endswith("."):
        return module.startswith(prefix)
    return module == prefix or module.startswith(prefix + ".")


def forbidden_arrows(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if (importer, target) in ALLOWED:
                continue
            for src_prefix, dst_prefix in FORBIDDEN:
                own = src_prefix.rstrip(".")
                if (
                    _covers(src_prefix, importer)
                    and _covers(dst_prefix, target)
                    and not _covers(own, target)
                ):
                    problems.append(f"{importer} -> {target} (no {src_prefix} -> {dst_prefix})")
                    break
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print every arrow")
    args = parser.parse_args(argv)
    graph = import_graph()
    if args.graph:
        for importer, targets in sorted(graph.items()):
            for target in sorted(targets):
                print(f"{importer} -> {target}")
    problems = forbidden_arrows(graph)
    loops = cycles(graph)
    for problem in problems:
        print(f"forbidden import: {problem}")
    for loop in loops:
        print(f"import cycle among: {', '.join(loop)}")
    if problems or loops:
        return 1
    print(f"imports: {len(graph)} modules, no cycle, no forbidden arrow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
