"""The house keeps its shape: no import cycle (TYPE_CHECKING and function-level imports included),
nothing below the daemon imports it, modules stay small unless a reason is written down, the
README's layout names every module, and the two copies of the demo config stay equal.

The import checker is tested on a package made to hold a cycle, so it is known to find one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from devkit.paths import ROOT

PACKAGE = ROOT / "edge_runtime"

# Modules over MAX_LINES, each with the reason it stays whole (checked both ways: a module that
# shrank below the limit must leave this list).
MAX_LINES = 400
LARGE_MODULES: dict[str, str] = {
    "edge_runtime/reporting/outbox.py": (
        "one SQLite connection under one lock: bounds, eviction, the free-disk reserve, seq and "
        "corruption handling share its transactions and counters (the disk arithmetic is in "
        "reporting/diskbudget.py, salvage and seq reservations in reporting/seqstate.py)"
    ),
    "edge_runtime/reporting/mqtt.py": (
        "one paho client's life: connect with backoff, the loop, the forwarder and its acknowledgements; "
        "the in-order delivery across reconnects depends on how these share the in-flight list"
    ),
    "edge_runtime/pipeline/pipeline.py": (
        "one pipeline's domain: inference of one trigger or a batch, numbering, the group commit of "
        "waiting results, and the hooks updates, the HTTP API and data capture use; the thread engine "
        "(stages.py), trigger waiting (trigger.py), batches (batch.py), the runner, the result "
        "document, the health entry (stats.py) and the probation watch are already apart"
    ),
    "edge_runtime/updates/store.py": (
        "the crash-safety protocol of the model store (pointers, probation, history, pruning, and "
        "each version's drift reference kept and pruned with its model) is one state machine under "
        "one lock; split, its invariants would span files"
    ),
}


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``pkg.mod.Class`` -> ``pkg.mod``)."""
    known = set(known)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: Mapping[str, Path], package: str) -> set[str]:
    """Every module of ``package`` that importing ``module`` runs: its imports anywhere in the file
    (top level, functions, ``if TYPE_CHECKING``), and the packages that hold them, except the
    packages ``module`` is itself in (those are already initialised when it runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name != package and not name.startswith(package + "."):
                continue
            target = _resolve(name, known)
            if target is None:
                continue
            ancestors = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):  # the packages on the way, then the module
                step = ".".join(parts[:depth])
                if step in known and step not in ancestors and step != module:
                    targets.add(step)
    return targets


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports_of(name, path, known, package) for name, path in known.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_cycles_through_type_checking_and_function_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "demo_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from demo_pkg.sub.b import B\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from demo_pkg.sub.b import B\n"
    )
    (pkg / "sub" / "b.py").write_text("def f():\n    from demo_pkg import a\n    return a\nclass B: ...\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "sub" / "d.py").write_text("from ..c import x\n")
    graph = import_graph(tmp_path, "demo_pkg")
    assert graph["demo_pkg.c"] == {"demo_pkg.a"}  # a relative import resolved
    assert graph["demo_pkg.sub.d"] == {"demo_pkg.c"}  # its own package is not an edge
    assert graph["demo_pkg.a"] == {"demo_pkg.sub", "demo_pkg.sub.b"}  # the package on the way too
    assert cycles(graph) == [["demo_pkg.a", "demo_pkg.sub", "demo_pkg.sub.b"]]
    (pkg / "a.py").write_text("X = 1\n")
    assert cycles(import_graph(tmp_path, "demo_pkg")) == []


def test_edge_runtime_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, "edge_runtime")
    assert len(graph) > 50
    assert cycles(graph) == []


def test_nothing_below_the_daemon_imports_it() -> None:
    graph = import_graph(ROOT, "edge_runtime")
    above = ("edge_runtime.daemon", "edge_runtime.cli", "edge_runtime.__main__")
    offenders = {
        module: sorted(t for t in targets if t.startswith("edge_runtime.daemon"))
        for module, targets in graph.items()
        if not module.startswith(above)
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_modules_stay_small_unless_a_reason_is_written_down() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    large = {name for name, lines in sizes.items() if lines > MAX_LINES}
    assert large - set(LARGE_MODULES) == set(), f"over {MAX_LINES} lines: split them or state why here"
    assert set(LARGE_MODULES) - large == set(), "back under the limit: remove them from LARGE_MODULES"


def readme_layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def test_the_readme_layout_names_every_module_and_nothing_else() -> None:
    layout = readme_layout()
    named = set(re.findall(r"`(edge_runtime/[\w/]+\.py|devkit/[\w/]+\.py|tools/[\w/.]+)`", layout))
    actual = {
        str(p.relative_to(ROOT))
        for base in ("edge_runtime", "devkit")
        for p in (ROOT / base).rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    missing = sorted(actual - named)
    assert missing == [], f"README ## Layout does not name: {missing}"
    gone = sorted(n for n in named if not (ROOT / n).exists())
    assert gone == [], f"README ## Layout names files that do not exist: {gone}"


def test_the_demo_config_in_the_package_is_the_documented_one() -> None:
    packaged = (PACKAGE / "demo.toml").read_bytes()
    assert packaged == (ROOT / "devices" / "demo.toml").read_bytes(), (
        "edge_runtime/demo.toml (what `edge-runtime run` runs) and devices/demo.toml (the documented "
        "example) differ: copy one over the other"
    )
