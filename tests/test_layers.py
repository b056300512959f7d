"""The import layers of ``runtime`` hold, as ``docs/architecture.md`` draws them.

Every module of ``runtime/`` and ``actors/`` is parsed (``ast``, nothing is imported) and every
import in it is read: at the top, inside functions and under ``if TYPE_CHECKING:``, since a
type-only or a deferred import is still a dependency a reader must follow. The tests check:

- there is no import cycle among the modules of ``runtime``;
- ``actors`` imports nothing from ``runtime`` (the kernel knows nothing of features);
- each module imports only from the layers :data:`RULES` allows it, a table that mirrors the
  one in ``docs/architecture.md`` ("What each subpackage owns"): change both together;
- every module is covered by a rule, so a new module has to be given its place.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The foundations every layer may use: the error tree, durations, logging, the defaults
#: and bounds of spec options (``_spec.limits``, a leaf that imports nothing), and the hold on
#: the garbage collector's threshold (``_gc``, a leaf too).
BASE = ("_exceptions", "_duration", "_logging", "_spec.limits", "_gc")
#: The pure layers below the actors: algorithms, specs, and what the runtime gives back.
PURE = (*BASE, "_stats", "_spec", "_results", "_batches", "_updates")
#: The engines: plain computation over a dict of per-key state that the caller owns.
ENGINES = (*PURE, "_keyed", "_windows.engine", "_windows.state", "_windows.patterns")
ENGINES += ("_joins.engine", "_joins.buffer", "_drift.detectors", "_drift.two_sample")
#: What a shard actor may use besides its own subpackage: the engines, the codec of their
#: state, the shared vocabulary and the kernel.
SHARD = (*ENGINES, "_checkpoints.codec", "_messages", "actors")
#: The shard actors: none of them imports another (GroupShard, in ``_shard``, is the base the
#: window groups' actor extends).
SHARD_MODULES = ("_shard", "_windows.shard", "_joins.shard", "_enrich.shard", "_drift.monitor")
#: Everything below the runtime's collaborators: the shard actors and what they stand on.
BELOW_FACADE = (
    *SHARD,
    *SHARD_MODULES,
    "_ingest",
    "_enrich",
    "_checkpoints.store",
    "_options",
    "_topology",
)

#: module (a name under ``runtime``, or a prefix of names) -> what it may import besides its own
#: subpackage. The longest matching prefix applies; ``actors`` is the kernel. The order of the
#: rows is the layer order of docs/architecture.md, bottom first.
RULES: dict[str, tuple[str, ...]] = {
    # foundations
    "_exceptions": ("actors",),
    "_duration": ("_exceptions",),
    "_logging": ("actors",),
    "_spec.limits": (),
    "_gc": (),
    # pure: algorithms, specs, results
    "_stats": ("_exceptions", "_spec.limits"),
    "_spec": BASE,
    "_results": (*BASE, "_spec"),
    "_batches": (*BASE, "_results"),
    "_updates": BASE,
    # engines and per-concern building blocks (no actors)
    "_ingest": BASE,  # the package's __init__; its modules have rows of their own
    "_ingest.events": (*BASE, "_spec"),
    "_ingest.result": (*BASE, "_ingest.events"),
    "_keyed": (*BASE, "_stats", "_spec"),
    "_windows": (*BASE, "_stats", "_spec", "_keyed"),
    "_joins": (*BASE, "_stats", "_spec"),
    "_drift": (*BASE, "_stats", "_spec", "actors"),  # actors: two_sample's logger
    # the enrichment sources, cache and fetcher: I/O, with the kernel's BatchLoader
    "_enrich": (*BASE, "_spec", "actors"),
    # checkpoints: the files, and the codec of the engines' state
    "_checkpoints": BASE,  # the package's __init__
    "_checkpoints.store": (*BASE, "actors"),
    "_checkpoints.codec": (*BASE, *ENGINES, "_enrich.cache"),
    # the vocabulary of the shard actors
    "_messages": (*BASE, "_results", "actors"),
    # the actors
    "_shard": SHARD,
    "_windows.shard": (*SHARD, "_shard"),
    "_joins.shard": SHARD,
    "_enrich.shard": (*SHARD, "_enrich"),
    "_drift.monitor": SHARD,
    "_ingest.router": (*BASE, "_messages", "actors"),
    # the runtime's collaborators, and the facade over them
    "_options": (*PURE, "_ingest.events", "_checkpoints.store", "actors"),
    "_topology": BELOW_FACADE,
    "_checkpoints.coordinator": BELOW_FACADE,
    "_observe": (*BELOW_FACADE, "_checkpoints.coordinator"),
    "_replay": BASE,  # the package's __init__
    "_replay.history": (*PURE, "_ingest", "_messages", "actors"),
    # the front of a runtime whose shards run in worker processes, and the workers' loop
    # (their runtime is made by a factory the facade passes in: they never import it)
    "_workers": (*PURE, "_ingest.events", "_ingest.router", "_checkpoints", "actors"),
    # sources and the loop that consumes them (the runtime is passed in: they never import it)
    "_connectors": (*PURE, "actors"),
    "_runtime": (
        *BELOW_FACADE,
        "_checkpoints",
        "_observe",
        "_replay.history",
        "_workers",
        "_connectors",
    ),
    # above the facade: what builds a FeatureRuntime of its own, and the public face
    "_replay.parity": (*BELOW_FACADE, "_checkpoints", "_observe", "_replay", "_runtime"),
    "_training": (*BELOW_FACADE, "_replay", "_runtime"),
    # the feature service: an HTTP app around a runtime of its own, its sources and sinks
    "_service": (*BELOW_FACADE, "_observe", "_connectors", "_runtime"),
    "__main__": ("_service",),
    "parity": (*PURE, "_replay", "_ingest.events", "actors"),
    "": ("*",),  # runtime/__init__.py: the public face re-exports from every layer
}

#: The only modules that may import ``runtime._runtime``: the package's ``__init__`` and
#: ``check_parity`` and ``training_set``, which start a runtime of their own to replay into, and
#: the feature service, whose lifespan starts the runtime it serves.
FACADE_USERS = ("", "_replay.parity", "_training.build", "_training.lookups", "_service.app")


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package``, by dotted name (``runtime._spec.feature_set``)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, source: str, known: set[str], *, package: bool = False) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, anywhere in ``source``.

    Relative imports are resolved against ``name`` (its own package when ``package`` is true,
    that is for an ``__init__.py``); ``from x import y`` counts ``x.y`` when that is a module,
    else ``x``; a module's imports of itself are left out.
    """
    base = name.split(".") if package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - (node.level - 1)]
                module = ".".join([*stem, node.module] if node.module else stem)
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names]
            targets = [t if t in known else module for t in targets]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` or a name of a module: the deepest known module it names
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ``runtime`` and ``actors`` it imports."""
    modules = {**_modules("runtime"), **_modules("actors")}
    known = set(modules)
    return {
        name: imports_of(
            name, path.read_text(encoding="utf-8"), known, package=path.name == "__init__.py"
        )
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next((w for w in edges if w in graph), None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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


def _local(name: str) -> str:
    """``runtime._spec.feature_set`` -> ``_spec.feature_set``; ``runtime`` -> ``""``."""
    return name.removeprefix("runtime").removeprefix(".")


def _under(name: str, prefix: str) -> bool:
    return prefix == "*" or name == prefix or name.startswith(prefix + ".")


def _rule(local: str) -> str | None:
    """The row of :data:`RULES` for a module: its longest matching prefix."""
    if local == "":
        return ""
    matches = [prefix for prefix in RULES if prefix and _under(local, prefix)]
    return max(matches, key=len, default=None)


def _allowed(local: str, target: str) -> bool:
    """May module ``local`` of runtime import ``target`` (``actors`` or a local name)?"""
    row = _rule(local)
    assert row is not None
    own = local.split(".")[0]
    if target != "actors" and local and _under(target, own):
        return True  # its own subpackage (a cycle there is the cycle test's business)
    return any(_under(target, prefix) for prefix in RULES[row])


def test_no_import_cycle_among_runtime_modules() -> None:
    graph = {
        name: {t for t in targets if _under(t, "runtime")}
        for name, targets in _graph().items()
        if _under(name, "runtime")
    }
    assert _cycles(graph) == []


def test_actors_imports_nothing_from_runtime() -> None:
    wrong = {
        name: sorted(t for t in targets if _under(t, "runtime"))
        for name, targets in _graph().items()
        if _under(name, "actors")
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_every_runtime_module_has_a_layer_rule() -> None:
    missing = [name for name in _graph() if _under(name, "runtime") and _rule(_local(name)) is None]
    assert missing == [], "add these modules to RULES (and to docs/architecture.md)"


def test_each_runtime_module_imports_only_from_the_layers_below_it() -> None:
    wrong = []
    for name, targets in sorted(_graph().items()):
        if not _under(name, "runtime") or _rule(_local(name)) is None:
            continue
        for target in sorted(targets):
            local = "actors" if _under(target, "actors") else _local(target)
            if not _allowed(_local(name), local):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_shard_actors_share_messages_and_never_import_one_another() -> None:
    graph = _graph()
    wrong = []
    for module in SHARD_MODULES:
        for target in graph[f"runtime.{module}"]:
            other = _local(target)
            # the window groups' actor extends GroupShard, the keyed groups' actor
            if other in SHARD_MODULES and (module, other) != ("_windows.shard", "_shard"):
                wrong.append(f"runtime.{module} -> {target}")
    assert wrong == []
    # every one of them speaks the shared vocabulary
    assert [m for m in SHARD_MODULES if "runtime._messages" not in graph[f"runtime.{m}"]] == []


def test_only_the_facade_imports_the_runtime_module() -> None:
    users = sorted(
        _local(name)
        for name, targets in _graph().items()
        if "runtime._runtime" in targets and _local(name) not in FACADE_USERS
    )
    assert users == []


def test_imports_are_read_inside_functions_and_type_checking_blocks() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n"
        "    from ..top import Name\n"
        "def f():\n"
        "    import pkg.sub.d\n"
        "    from .sub.e import g\n"
    )
    known = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.top", "pkg.sub.d"}
    known |= {"pkg.sub.sub", "pkg.sub.sub.e"}
    assert imports_of("pkg.sub.a", source, known) == {
        "pkg.sub.b",
        "pkg.sub.c",
        "pkg.top",
        "pkg.sub.d",
        "pkg.sub.sub.e",
    }
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
