"""The declared dependencies cover what the package imports, and the Hub errors it catches are the installed client's."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def _optional() -> set[str]:
    """The distributions of the extras a user installs for a feature (not dev or docs): imported only where used."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    return {_canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])
            for name, specs in extras.items() if name not in ("dev", "docs") for spec in specs}


def _imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, over the package and the Hub scripts."""
    found: dict[str, str] = {}
    for path in sorted([*(ROOT / "hf_ckptkd").rglob("*.py"), *(ROOT / "hub_scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    distributions = packages_distributions()
    declared = _declared()
    undeclared = []
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in ("hf_ckptkd", "__future__") or _canonical(module) in _optional():
            continue
        owners = {_canonical(d) for d in distributions.get(module, [])}
        assert owners, f"{where} imports {module}, which no installed distribution provides"
        if not owners & declared:
            undeclared.append(f"{module} ({where}; from {sorted(owners)})")
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_hub_errors_caught_are_the_installed_clients_transport_errors():
    from huggingface_hub.utils import get_session

    from hf_ckptkd.hub.errors import TRANSPORT_ERRORS

    transport = sys.modules[type(get_session()).__module__.split(".")[0]]
    assert transport.TransportError in TRANSPORT_ERRORS, (
        f"huggingface_hub uses {transport.__name__}, whose connection errors hf_ckptkd.hub would not catch")
