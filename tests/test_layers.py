"""Layers import only downward: the table in docs/architecture.md is the rule, checked on every module.

Each module of `megasci/`, `tools/` and `benchmarks/` belongs to one layer of the table; every import
of a megasci module (top-level or inside a function) must land in the importer's own layer or in one
its row names, and no module reaches for another module's `_private` names.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")
CHECKED = ("megasci", "tools", "benchmarks")


@dataclass(frozen=True)
class Layer:
    name: str
    paths: tuple[str, ...]  # "megasci/data/" (a folder) or "megasci/export_hf.py" / "megasci/_C" (one module)
    may_import: frozenset[str]


def read_layers(text: str) -> list[Layer]:
    """The rows of the `| layer | modules | may import |` table under `## Layers`."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-", " "}:
            continue
        paths = tuple(re.findall(r"`([^`]+)`", cells[1]))
        may = frozenset(n.strip() for n in cells[2].split(",") if n.strip())
        layers.append(Layer(cells[0], paths, may))
    return layers


def module_name(path: str) -> str:
    """`megasci/data/gpt_dataset.py` -> `megasci.data.gpt_dataset`; a package's `__init__.py` -> the package."""
    name = path[: -len(".py")] if path.endswith(".py") else path
    name = name.replace(os.sep, ".").replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    """The layer whose most specific path holds `module`."""
    best, best_len = None, -1
    for layer in layers:
        for path in layer.paths:
            prefix = module_name(path.rstrip("/"))
            if (module == prefix or (path.endswith("/") and module.startswith(prefix + "."))) and len(
                prefix
            ) > best_len:
                best, best_len = layer, len(prefix)
    return best


def _is_module(module: str) -> bool:
    """A package, a `.py` file or a compiled extension (`_C.cpython-311-x86_64-linux-gnu.so`) of that name."""
    base = os.path.join(ROOT, *module.split("."))
    if os.path.isdir(base) or os.path.isfile(base + ".py"):
        return True
    folder, stem = os.path.split(base)
    return os.path.isdir(folder) and any(
        n.startswith(stem + ".") and n.endswith((".so", ".pyd")) for n in os.listdir(folder)
    )


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports_of(module: str, source: str, is_package: bool = False) -> list[tuple[int, str, str | None]]:
    """(line, imported megasci module, imported name or None) for every import in `source`."""
    found = []
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "megasci"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "megasci":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub, None) if _is_module(sub) else (node.lineno, target, alias.name))
    return found


def violations(path: str, source: str, layers: list[Layer]) -> list[str]:
    """Every import in `source` (the text of `path`, relative to the root) that breaks the table."""
    module = module_name(path)
    own = layer_of(module, layers)
    if own is None:
        return [f"{path}: belongs to no layer of {DOC}; add it to the table"]
    problems, imported_names = [], {}
    for line, target, name in imports_of(module, source, path.endswith("__init__.py")):
        layer = layer_of(target, layers)
        if layer is None:
            problems.append(f"{path}:{line}: imports {target}, which belongs to no layer")
        elif layer.name != own.name and layer.name not in own.may_import:
            problems.append(
                f"{path}:{line}: layer {own.name} imports {target} from layer {layer.name}, "
                f"which it may not (it may import: {', '.join(sorted(own.may_import)) or 'nothing'})"
            )
        if target != module and name is not None:
            if _private(name):
                problems.append(f"{path}:{line}: imports the private name {name} of {target}")
            imported_names[name] = target
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "megasci":
                    imported_names[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = ast.unparse(node.value)
            target = imported_names.get(owner)
            if target is not None and target != module:
                problems.append(f"{path}:{node.lineno}: uses {owner}.{node.attr}, a private name of {target}")
    return list(dict.fromkeys(problems))  # one line per problem, though it imports several names


def project_files() -> list[str]:
    files = []
    for top in CHECKED:
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names if n.endswith(".py")]
    return sorted(files)


@pytest.fixture(scope="module")
def layers() -> list[Layer]:
    with open(DOC, encoding="utf-8") as f:
        return read_layers(f.read())


def test_the_table_names_every_layer_of_the_declared_order(layers):
    assert [layer.name for layer in layers] == [
        "utils",
        "corpus",
        "tokenizer",
        "data",
        "ops",
        "model",
        "distributed",
        "training",
        "evaluation/export",
        "tools",
    ]
    names = {layer.name for layer in layers}
    for i, layer in enumerate(layers):  # a row may name only layers above it in the table: the order is one way
        assert layer.may_import <= {other.name for other in layers[:i]}, layer
        assert layer.may_import <= names


def test_every_module_imports_only_downward(layers):
    problems = []
    for path in project_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            problems += violations(path, f.read(), layers)
    assert not problems, "\n".join(problems)


# The imports issue 14 found, each as it was written; the check must refuse every one of them.
FOUND_BEFORE = [
    (
        "megasci/training/trainer.py",
        "from megasci.evaluation import evaluate, tokenizer_warnings\n",
        "layer training imports megasci.evaluation from layer evaluation/export",
    ),
    (
        "megasci/export_hf.py",
        "def _probe_texts():\n    from megasci.corpus.synthetic import generate_papers\n",
        "layer evaluation/export imports megasci.corpus.synthetic from layer corpus",
    ),
    (
        "megasci/training/trainer.py",
        "from megasci.data.blended_dataset import BlendedDataset\n\nn = BlendedDataset._split_tokens(config)\n",
        "uses BlendedDataset._split_tokens, a private name of megasci.data.blended_dataset",
    ),
    (
        "megasci/model/llama.py",
        "from megasci.training.parallelize import checkpoint\n",
        "layer model imports megasci.training.parallelize from layer training",
    ),
    (
        "megasci/data/gpt_dataset.py",
        "import megasci.distributed.env as env\n",
        "layer data imports megasci.distributed.env from layer distributed",
    ),
    (
        "megasci/corpus/builder.py",
        "from ..data.preprocess import _jsonable\n",
        "imports the private name _jsonable of megasci.data.preprocess",
    ),
]


@pytest.mark.parametrize("path, source, expected", FOUND_BEFORE)
def test_the_check_refuses_the_imports_issue_14_found(layers, path, source, expected):
    found = violations(path, source, layers)
    assert any(expected in p for p in found), found


def test_relative_imports_and_packages_resolve(layers):
    assert imports_of("megasci.training.trainer", "from .config import TrainConfig\n") == [
        (1, "megasci.training.config", "TrainConfig")
    ]
    assert imports_of("megasci.model", "from .llama import Transformer\n", is_package=True) == [
        (1, "megasci.model.llama", "Transformer")
    ]
    assert imports_of("megasci.model.llama", "from megasci import ops\n") == [(1, "megasci.ops", None)]
    assert (
        violations("megasci/model/llama.py", "from megasci import ops\nfrom .config import ModelConfig\n", layers) == []
    )
    assert violations("megasci/newpackage/thing.py", "", layers)[0].endswith("add it to the table")
