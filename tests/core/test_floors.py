"""The floors of docs/architecture.md hold: a module imports only from its own folder or from a
floor below (function-level imports included). The floors are read from the document itself, so
the picture the next engineer reads and the rule the suite enforces cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE_DIRS = ["builders", "generators", "training", "validation", "dataset_cards", "examples"]


def floors_from_doc(text: str) -> dict[str, int]:
    """``| 3 | `validation/` |`` rows of the floors table -> {"validation": 3}; a place is a folder
    (``validation``) or a single module (``builders/cli.py`` -> ``builders.cli``)."""
    floors: dict[str, int] = {}
    for n, cell in re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", text, flags=re.M):
        for place in re.findall(r"`([\w/.]+)`", cell):
            floors[place.strip("/").removesuffix(".py").replace("/", ".")] = int(n)
    return floors


def place_of(module: str, floors: dict[str, int]) -> str | None:
    """The longest floors entry that ``module`` (dotted, without ``mammosynth.``) lies in."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in floors:
            return ".".join(parts[:k])
    return None


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name without ``mammosynth.``) of every import of the package in ``source``."""
    out = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
            elif node.module:
                names = [node.module]
                # `from mammosynth.builders.core import atomic` names a module too
                names += [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("mammosynth."):
                out.append((node.lineno, name.removeprefix("mammosynth.")))
    return out


def violations(floors: dict[str, int], modules: dict[str, str]) -> list[str]:
    """'file:line: A (floor a) imports B (floor b)' for each import that is not allowed."""
    found = []
    for module, source in modules.items():
        here = place_of(module, floors)
        assert here is not None, f"{module} lies on no floor of {DOC.name}"
        for line, target in imported_modules(source, module):
            there = place_of(target, floors)
            if there is None or there == here:
                continue  # a name inside a module, or the module's own folder
            if floors[there] >= floors[here]:
                found.append(
                    f"{module}:{line}: {here} (floor {floors[here]}) imports {target} ({there}, floor {floors[there]})"
                )
    return found


def package_modules() -> dict[str, str]:
    modules = {}
    for top in PACKAGE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            source = path.read_text(encoding="utf-8")
            if dotted == "builders" and "import" not in source:
                continue  # the namespace's own folder, holding nothing but sub-floors
            modules[dotted] = source
    return modules


def test_every_folder_has_a_floor() -> None:
    floors = floors_from_doc(DOC.read_text())
    assert floors["builders.core"] == 1
    for module in package_modules():
        assert place_of(module, floors), f"{module} is on no floor of docs/architecture.md"


def test_no_module_imports_from_a_floor_above_or_beside() -> None:
    floors = floors_from_doc(DOC.read_text())
    assert violations(floors, package_modules()) == []


@pytest.mark.parametrize(
    "source, bad",
    [
        ("from mammosynth.builders.release.build import build\n", True),  # up
        ("def f():\n    from mammosynth.validation import gate\n", True),  # up, inside a function
        ("import mammosynth.training.data\n", True),  # beside: generators and training share a floor
        ("from mammosynth.builders.core import atomic\n", False),  # down
        ("from mammosynth.generators.engine import plan\n", False),  # own folder
    ],
)
def test_the_check_catches_upward_and_sideways_imports(source: str, bad: bool) -> None:
    floors = floors_from_doc(DOC.read_text())
    assert bool(violations(floors, {"generators.poisson": source})) is bad


def private_imports(modules: dict[str, str]) -> list[str]:
    """'module:line: name from other' for each underscore name imported from another module."""
    found = []
    for module, source in modules.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mammosynth."):
                other = node.module.removeprefix("mammosynth.")
                for alias in node.names:
                    if alias.name.startswith("_") and other != module:
                        found.append(f"{module}:{node.lineno}: {alias.name} from {other}")
    return found


def test_no_private_name_crosses_a_module() -> None:
    assert private_imports(package_modules()) == []
    assert private_imports({"generators.poisson": "from mammosynth.generators.inpainting import _decode\n"})
