"""The layers point one way: an AST walk of the package's own imports (module level and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("compressor",)
# imports inside function bodies: about 170 before the layers were untangled; only optional heavy dependencies
# (tensorrt, onnxruntime, matplotlib, FID weights, the phone formats' converters) and the torch-importing model code
# in the timing worker stay lazy
MAX_FUNCTION_LEVEL_IMPORTS = 100  # 85 before the optional OpenVINO and phone-format runtimes, imported where used
APP, EXPORTERS = "compressor.app", "compressor.exporters"
ENTRY = ("compressor", "compressor.__main__")  # the package's face (the public API) and python -m compressor
# project modules a function may import: the timing worker builds a PyTorch model only for a torch backend, so that
# an ONNX Runtime measurement never loads torch
LAZY_PROJECT_IMPORTS = ("compressor/exporters/timing.py",)


def _layer(mod: str) -> str:
    if mod in ENTRY:
        return "entry"
    if mod == APP or mod.startswith(APP + "."):
        return "app"
    if mod == EXPORTERS or mod.startswith(EXPORTERS + "."):
        return "exporters"
    return "library"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for d in PACKAGES for p in sorted((ROOT / d).rglob("*.py"))}


def _imports(path: Path, mod: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)

    def own(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package[: len(package) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            out.append((own(t) or f"<external>{t}", node.lineno, id(node) in in_function))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: {t for t, _, _ in _imports(p, m, known) if t in known and t != m} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 25 and "compressor.app.stages" in graph and "compressor.exporters.export" in graph
    assert _cycles(graph) == []


def test_the_layers_point_down():
    """library <- exporters <- app <- entry: no module imports a layer above its own, even inside a function."""
    order = ["library", "exporters", "app", "entry"]
    graph = _graph()
    up = [(m, d) for m, deps in graph.items() for d in deps if order.index(_layer(d)) > order.index(_layer(m))]
    assert up == []
    assert {_layer(m) for m in graph} == set(order)


def test_recipe_schema_is_data():
    graph = _graph()
    # zoo_args: the zoo's arguments as data; remote: the ssh option allow-list and host/program checks, strings only;
    # schemas: the pydantic bases; terms: the loss-term table (each term's recipe entry beside its function);
    # io: the one bounded reader of files from folders (regular files only, never a blocking open)
    allowed = {
        "compressor.errors",
        "compressor.io",
        "compressor.zoo_args",
        "compressor.remote",
        "compressor.schemas",
        "compressor.terms",
    }
    assert graph["compressor.recipe"] <= allowed, graph["compressor.recipe"]
    assert graph["compressor.terms"] <= {"compressor.schemas", "compressor.losses"}, graph["compressor.terms"]
    assert graph["compressor.losses"] == set()
    assert graph["compressor.zoo_args"] == set()
    assert graph["compressor.remote"] <= {"compressor.errors"}
    assert "compressor.recipe" not in _reaches(graph, "compressor.recipe")


def test_library_never_imports_upward():
    graph = _graph()
    for mod in graph:
        if _layer(mod) == "library":
            assert {_layer(m) for m in _reaches(graph, mod)} <= {"library"}, mod
    # the pipeline keeps to stage order: it reaches the library only through the stages and the run folder
    assert graph["compressor.app.pipeline"] <= {
        "compressor.errors",
        "compressor.io",
        "compressor.recipe",
        "compressor.lock",
        "compressor.resume",
        "compressor.runfolder",
        "compressor.app.context",
        "compressor.app.preflight",
        "compressor.app.stages",
    }


def test_function_level_imports_are_few():
    mods = _modules()
    known = set(mods)
    lazy = sorted(
        {
            (str(p.relative_to(ROOT)), line, t)
            for m, p in mods.items()
            for t, line, inside in _imports(p, m, known)
            if inside
        }
    )
    statements = {(f, line) for f, line, _ in lazy}
    assert len(statements) <= MAX_FUNCTION_LEVEL_IMPORTS, len(statements)
    # none of them is a project module imported lazily to dodge a cycle (see LAZY_PROJECT_IMPORTS)
    project = [x for x in lazy if not x[2].startswith("<external>")]
    assert all(f in LAZY_PROJECT_IMPORTS for f, _, _ in project), project


MAX_FUNCTION_LINES = 80
# Functions allowed to be longer, each with its reason. The list only shrinks: an entry that is no longer too long
# fails the test below until it is removed.
LONG_FUNCTIONS: dict[str, str] = {}


def _function_lengths() -> dict[str, int]:
    """{"file:function": lines from its def to its last line} for every function (nested ones too)."""
    out = {}
    for path in _modules().values():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{rel}:{node.name}"
                out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_functions_are_short():
    lengths = _function_lengths()
    assert len(lengths) > 300 and "compressor/app/pipeline.py:run_pipeline" in lengths
    long = {f: n for f, n in lengths.items() if n > MAX_FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them, or list them with a reason): {long}"
    stale = [f for f in LONG_FUNCTIONS if lengths.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines (or gone): remove from LONG_FUNCTIONS: {stale}"
