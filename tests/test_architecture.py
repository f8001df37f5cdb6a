"""The layers of docs/architecture.md hold: no module imports a layer above its own or a sibling
package of its layer, nothing but the train entry point imports `training`, and the module import
graph has no cycle. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edlm_dist"
# lowest first; a unit may import its own package and any unit of a lower layer
LAYERS = (
    ("fileio",),
    ("config",),
    ("diffusion",),
    ("models",),
    ("data",),
    ("distributed",),
    ("runs",),
    ("energy",),
    ("training", "evaluation", "interop"),
    ("reproduce",),
    ("train", "eval", "sample"),
)
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}
# the layers inside `data`, lowest first (its __init__ sits above them all)
DATA_LAYERS = (
    ("errors",),
    ("token_table", "chat_template", "hf_files"),
    ("tokenizers", "zstd_frames", "sources", "detokenizers"),
    ("corpus_format", "corpus_reader", "corpus_writer", "integrity"),
    ("batches", "loaders", "packed", "raw_stream"),
    ("dataset", "text", "synthetic", "prepared"),
    ("datasets",),
    ("eval_sets",),
)
DATA_LAYER = {name: level for level, names in enumerate(DATA_LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every edlm_dist module and the edlm_dist modules it imports."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edlm_dist"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("edlm_dist")}
        graph[module_name(path)] = found
    return graph


def unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_unit_has_a_layer_and_imports_only_below_it():
    graph = imports()
    units = {unit(m) for m in graph} - {""}
    assert units == set(LAYER), f"units without a layer in docs/architecture.md: {sorted(units - set(LAYER))}"
    wrong = sorted(f"{m} imports {d}" for m, deps in graph.items() if unit(m) for d in deps
                   if unit(d) != unit(m) and LAYER[unit(d)] >= LAYER[unit(m)])
    assert wrong == []


def test_data_modules_import_only_their_layer_and_below():
    graph = {m: deps for m, deps in imports().items() if unit(m) == "data" and m != "edlm_dist.data"}
    names = {m.split(".")[2] for m in graph}
    assert names == set(DATA_LAYER), f"data modules without a layer: {sorted(names - set(DATA_LAYER))}"
    wrong = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps if unit(d) == "data"
                   and d != "edlm_dist.data" and DATA_LAYER[d.split(".")[2]] > DATA_LAYER[m.split(".")[2]])
    assert wrong == []
    assert not any("edlm_dist.data" in deps for deps in graph.values()), "a data module imports the data package"


def test_only_the_train_entry_point_imports_training():
    outside = sorted(m for m, deps in imports().items() if unit(m) not in ("training", "train")
                     and any(unit(d) == "training" for d in deps))
    assert outside == []


def test_the_module_graph_has_no_cycle():
    graph = imports()

    def edges(module: str) -> set[str]:  # a package's own __init__ is not an edge back into it
        return {d for d in graph.get(module, ()) if d in graph and d != module and not module.startswith(d + ".")}

    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in edges(module):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [module, dep]) if dep in path else f"{module} -> {dep}")
            elif dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []
