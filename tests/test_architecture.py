"""ARCHITECTURE.md's claims about imports hold in the code: its layers, read from the document,
are the only direction imports run in, and no module imports itself round a circle.

Imports are read with `ast` from every module of the package, function-local ones included, so
a late import cannot hide a dependency."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_ckptkd"


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (the package itself when it imports a name from it)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from . import x` imports the module x; `from .m import x` imports m (and x if it is a module).
                targets = ([] if node.module is None else [base]) + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in modules and t != name)
    return edges


def _layers() -> list[set[str]]:
    """ARCHITECTURE.md's layers, top first: the lines of its ```layers block."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```layers block"
    return [set(line.split()) for line in block.group(1).splitlines() if line.strip()]


def _part(module: str) -> str:
    """The top-level package or module a module belongs to (hf_ckptkd.selection.report -> selection)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hf_ckptkd"


def test_every_part_of_the_package_is_on_exactly_one_documented_layer():
    layers = _layers()
    named = [p for layer in layers for p in layer]
    assert len(named) == len(set(named)), "a part is on two layers"
    parts = {_part(m) for m in _modules()} - {"hf_ckptkd"}
    assert parts == set(named), (f"undocumented: {sorted(parts - set(named))}; documented but absent: "
                                 f"{sorted(set(named) - parts)}")


def test_imports_run_only_down_the_documented_layers():
    level = {part: len(layers) - i for layers in [_layers()] for i, layer in enumerate(layers) for part in layer}
    wrong = []
    for module, targets in _imports(_modules()).items():
        if module == "hf_ckptkd":
            continue  # the public face imports from every layer
        for target in targets:
            a, b = _part(module), _part(target)
            if a != b and not level[b] < level[a]:
                wrong.append(f"{module} -> {target} ({a} is not above {b})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_itself_round_a_circle():
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in list(_modules()):
        if module not in index:
            visit(module)
    assert not circles, circles


def test_the_checker_sees_an_upward_import(tmp_path):
    """The reader resolves relative imports as Python does: a module of a lower layer importing a
    higher one is found (the check above cannot pass vacuously)."""
    modules = _modules()
    edges = _imports(modules)
    assert "hf_ckptkd.selection.report" in edges["hf_ckptkd.selection.choice"]
    assert "hf_ckptkd.models.architectures" in edges["hf_ckptkd.models.build"]  # from . import architectures
    assert "hf_ckptkd.config" in edges["hf_ckptkd.training.trainer"]


# What pyproject.toml requires, as the names the package imports them by.
REQUIRED = {"torch", "torchvision", "transformers", "accelerate", "timm", "datasets", "evaluate", "safetensors",
            "huggingface_hub", "jinja2", "tokenizers", "numpy", "PIL", "yaml", "matplotlib", "tqdm"}


def test_required_dependencies_and_our_own_modules_are_imported_at_the_top_of_a_module():
    late = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else \
                    ["hf_ckptkd" if node.level else (node.module or "").split(".")[0]]
                late += [f"{name}:{node.lineno} imports {root}" for root in roots if root in REQUIRED | {"hf_ckptkd"}]
    assert not late, "\n".join(late)


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long
