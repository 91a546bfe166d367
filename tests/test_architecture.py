"""The layering of ARCHITECTURE.md, checked: its table "Allowed imports" says what each package may import of the
project, and every import statement of every file of degradations/, maskdcpt/ and tools/ (function-level ones too)
must keep to its package's row."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("degradations", "maskdcpt", "tools")


def allowed_imports() -> dict[str, set[str] | None]:
    """ARCHITECTURE.md's table: package → the project modules it may import (None: anything)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split("## Allowed imports", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        package = cells[0].strip("`")
        rules[package] = None if cells[1] == "anything" else set(re.findall(r"`([\w.]+)`", cells[1]))
    return rules


RULES = allowed_imports()


def package_of(module: str) -> str:
    """The table's row that governs ``module``: the longest package name it lies in."""
    rows = [p for p in RULES if module == p or module.startswith(p + ".")]
    assert rows, f"{module} lies in no row of ARCHITECTURE.md's 'Allowed imports': add its package there"
    return max(rows, key=len)


def module_name(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The project modules that ``source`` (the text of module ``module``) imports anywhere in it, relative imports
    resolved (``from pkg import mod`` counts as ``pkg.mod`` where ``mod`` is a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            imported = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{imported}.{alias.name}"
                names.add(sub if _is_module(sub) else imported)
    return {n for n in names if n.split(".")[0] in PROJECT}


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` that its package's row does not allow."""
    package = package_of(module)
    allowed = RULES[package]
    if allowed is None:
        return []
    return sorted(n for n in project_imports(source, module, is_package)
                  if package_of(n) != package and not any(n == a or n.startswith(a + ".") for a in allowed))


FILES = sorted(f for top in PROJECT for f in (ROOT / top).rglob("*.py"))


def test_the_table_names_real_packages():
    assert {"degradations", "maskdcpt", "tools", "maskdcpt.models", "maskdcpt.training"} <= set(RULES)
    for package, allowed in RULES.items():
        for name in [package, *(allowed or ())]:
            assert _is_module(name) or (ROOT / name).is_dir(), (  # tools/ is a folder of scripts, no package
                f"ARCHITECTURE.md's 'Allowed imports' names {name}, which does not exist")


@pytest.mark.parametrize("file", FILES, ids=lambda f: str(f.relative_to(ROOT)))
def test_every_import_keeps_to_its_packages_row(file):
    module = module_name(file)
    bad = violations(file.read_text(), module, file.name == "__init__.py")
    assert not bad, (f"{file.relative_to(ROOT)} ({package_of(module)}) imports {bad}; ARCHITECTURE.md allows it "
                     f"only {sorted(RULES[package_of(module)] or ()) or 'nothing of the project'}")


def test_the_check_sees_relative_function_level_and_submodule_imports():
    source = ("from ..training import trainer\nfrom .. import data\nimport maskdcpt.launch.sweep\nfrom .base import Backbone\n"
              "def f():\n    from ..evaluation.metrics import psnr\n    from maskdcpt.io import atomic_write\n")
    assert project_imports(source, "maskdcpt.models.probe") == {
        "maskdcpt.training.trainer", "maskdcpt.data", "maskdcpt.launch.sweep", "maskdcpt.models.base",
        "maskdcpt.evaluation.metrics", "maskdcpt.io"}
    assert violations(source, "maskdcpt.models.probe") == [
        "maskdcpt.data", "maskdcpt.evaluation.metrics", "maskdcpt.launch.sweep", "maskdcpt.training.trainer"]
    assert violations(source, "maskdcpt.training.probe") == ["maskdcpt.launch.sweep"]  # evaluation.metrics: allowed
    assert violations("from maskdcpt.errors import ConfigError\n", "degradations.probe") == ["maskdcpt.errors"]
    assert violations("from maskdcpt.evaluation import evaluate\n", "maskdcpt.training.probe") == [
        "maskdcpt.evaluation.evaluate"]
