"""The code's shape: layering (jobs -> pipeline -> mgie, never back), no import circles, small modules.

Imports are read from the source (module level and inside functions alike: a lazy import is still a
dependency), so the test needs no package to be importable.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mgie", "pipeline", "jobs", "bench")
# what each layer may import from the project (itself included)
ALLOWED = {
    "mgie": {"mgie"},
    "pipeline": {"pipeline", "mgie"},
    "jobs": {"jobs", "pipeline", "mgie"},
    "bench": {"bench", "jobs", "pipeline", "mgie"},
}
# lines as `ruff format` lays them out (one argument a line where a call does not fit): 450 before it
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name refers to (`pipeline.rows.pack` -> `pipeline.rows`), if any."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` names the submodule; `from mod import name` the module itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                found = _resolve(target, modules)
                if found and found != module:
                    graph[module].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "pipeline.rows" in graph["pipeline.stages"]  # `from .rows import ...`
    assert "pipeline.run" in graph["jobs.edit"]  # a lazy import inside a function
    assert "mgie.model" in graph["mgie"]  # the package's __init__
    # `from .. import checkpoint` (in a sub-package) is the submodule, not the package
    assert "mgie.checkpoint" in graph["mgie.summarizer.model"] and "mgie" not in graph["mgie.summarizer.model"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_layers_import_only_downwards():
    breaches = [
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if t.split(".")[0] not in ALLOWED[m.split(".")[0]]
    ]
    assert breaches == []


# pipeline/ is the core (plan, stages, commit, ledger, storage, shards, config, writers/, the fault points of
# the protocol) plus sub-packages that build on it: evaluation/, reporting/, training/ and dev/ (local S3
# endpoint, demo data). The core imports none of them, so each can change or go without touching the protocol.
SUB_PACKAGES = ("pipeline.dev", "pipeline.evaluation", "pipeline.reporting", "pipeline.training")


def test_the_core_imports_none_of_its_sub_packages():
    graph = import_graph()
    core = [m for m in graph if m.startswith("pipeline.") and not m.startswith(SUB_PACKAGES)]
    breaches = sorted(f"{m} -> {t}" for m in core for t in graph[m] if t.startswith(SUB_PACKAGES))
    assert not breaches, breaches
    assert "pipeline.run" in core and "pipeline.writers.parquet" in core  # the split is the one meant


def private_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """`from other_module import _name` and `other_module._name` where other_module is one of ours."""
    tree = ast.parse(source)
    ours = ("mgie", "pipeline", "jobs", "bench")
    here = module.split(".") if is_package else module.split(".")[:-1]
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] not in ours:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module}: from {base} import {alias.name}")
                aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ours:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{module}: {node.value.id}.{node.attr}")
    return found


def test_the_private_import_reader_sees_both_spellings():
    source = (
        "from pipeline.storage import _with_scheme\nfrom . import outputs\nx = outputs._upsample\nimport os\nos._exit"
    )
    assert private_imports("pipeline.run", source) == [
        "pipeline.run: from pipeline.storage import _with_scheme",
        "pipeline.run: outputs._upsample",
    ]


def test_no_module_imports_another_modules_private_names():
    found = [hit for m, p in _modules().items() for hit in private_imports(m, p.read_text(), p.name == "__init__.py")]
    assert found == [], "make the name public (and document it) or keep its use inside its module"


def test_product_modules_stay_small():
    long = {
        str(p.relative_to(ROOT)): n
        for m, p in _modules().items()
        if m.split(".")[0] != "bench" and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


# the names under an output prefix: pipeline/layout.py alone spells them (OutputLayout), so a path changes in
# one place and no module builds one by hand
LAYOUT_MODULE = ROOT / "pipeline" / "layout.py"
LAYOUT_NAMES = ("shards/", "ledger/", "commits/", "run.json", "summary.json", "inputs.json", "lease.json")


def test_only_the_layout_module_spells_output_paths():
    hits = []
    for package in ("pipeline", "jobs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == LAYOUT_MODULE:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                hits += [f"{path.relative_to(ROOT)}:{number}: {name}" for name in LAYOUT_NAMES if name in line]
    assert hits == [], "use pipeline.layout.OutputLayout instead:\n" + "\n".join(hits)


# settings declared once in their group (pipeline/config.py and the modules it names): the product files that
# spell each one, its declaration and its uses, at most (before the grouped configs: copy_input in 8,
# qa_min_change at 9 places, image_guidance_scale in 7). The general words (input, resolution, seed) are
# not counted: other things share their names.
SETTING_SPREAD = {
    "copy_input": 4,
    "qa_min_change": 2,
    "qa_max_change": 2,
    "qa_min_clip_dir": 2,
    "strip_metadata": 2,
    "max_output_pixels": 4,
    "image_guidance_scale": 4,
    "detail_reference": 4,
    "express_batch_size": 4,
    "lease_timeout_s": 3,
    # declared in IOSettings, read for every job by jobs.arguments, resolved by pipeline.location
    "endpoint_url": 3,
}


def test_each_setting_is_spelled_only_where_it_is_declared_and_used():
    import re

    spread = {}
    for name, most in SETTING_SPREAD.items():
        files = [
            str(p.relative_to(ROOT))
            for package in ("pipeline", "jobs")
            for p in sorted((ROOT / package).rglob("*.py"))
            if re.search(rf"\b{name}\b", p.read_text())
        ]
        if len(files) > most:
            spread[name] = files
    assert spread == {}, "a setting reaches more files than its declaration and uses: pass its group instead"
