"""The folders' boundaries, read from the source files' own imports (no process, no TensorFlow),
so the layout cannot rot silently:

- ``shared/`` is the agreement: it imports nothing from ``consumer/``, ``producer/`` or
  ``harness/``;
- the handoff in ``consumer/`` (source, loader, graphs, manager, loop, evaluate, train) never
  imports its serving package; only the entry points that start a server do;
- nothing in ``producer/``, ``consumer/`` or ``shared/`` imports the test and demo harness;
- the consumer never reaches model code (``shared.models``) or the producer, even through
  another module: it reads exports through the contract alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("producer", "consumer", "shared", "harness", "bench", "scripts", "tests")
ENTRY_POINTS = {"consumer.__main__", "consumer.model_server"}  # they may start a server


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((REPO / package).rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (functions included), as absolute names."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(filter(None, [*anchor, base]))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    known = modules()
    return {name: {m for m in imports(path, name) if m in known} for name, path in known.items()}


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


EDGES = graph()


def breaches(sources, forbidden) -> list[str]:
    return sorted(f"{source} imports {target}" for source in EDGES if sources(source)
                  for target in EDGES[source] if forbidden(target))


def test_shared_imports_only_shared():
    assert not breaches(lambda m: inside(m, "shared"),
                        lambda t: any(inside(t, p) for p in ("consumer", "producer", "harness")))


def test_the_handoff_does_not_import_the_serving_package():
    def handoff(module: str) -> bool:
        return (inside(module, "consumer") and not inside(module, "consumer.serving")
                and module not in ENTRY_POINTS)
    assert not breaches(handoff, lambda t: inside(t, "consumer.serving"))


def test_no_product_code_imports_the_harness():
    assert not breaches(lambda m: any(inside(m, p) for p in ("producer", "consumer", "shared")),
                        lambda t: inside(t, "harness"))


@pytest.mark.parametrize("entry", sorted(m for m in EDGES if inside(m, "consumer")))
def test_the_consumer_never_reaches_model_code(entry):
    bad = [m for m in reachable(entry, EDGES) if m == "shared.models" or inside(m, "producer")]
    assert not bad, f"{entry} reaches {bad}"


def test_the_rules_see_real_imports():
    """The checker itself: it must find the imports that do exist, or every rule passes."""
    assert "shared.layout" in EDGES["shared.commit"]
    assert "consumer.serving.calls" in EDGES["consumer.serving.server"]
    assert "consumer.serving.server" in EDGES["consumer.__main__"]  # a function-level import
    assert "harness.processes" in EDGES["tests.helpers"]
    assert "shared.models" in reachable("producer.__main__", EDGES)
