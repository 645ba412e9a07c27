"""The arrows of the house: which of our packages may import which (docs: ARCHITECTURE.md).

Every import of every module is read with ``ast`` (top-level, inside functions, relative ones,
``importlib.import_module("literal")``), so a lazy import inside a function counts too. A
``"module:attribute"`` string in a kind declaration is not an import: that is how a model kind
is found without its package importing the trainer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> our packages it may import (itself included)
ALLOWED = {
    "norms": {"norms"},
    "core": {"core", "norms"},
    "flows": {"flows", "core", "norms"},
    "diffusion": {"diffusion", "core", "norms"},
    "trainers": {"trainers", "core", "norms"},
}


def _our_names(root: Path) -> set[str]:
    """Top-level packages and modules of the repository (what counts as "ours")."""
    packages = {p.parent.name for p in root.glob("*/__init__.py")}
    return packages | {p.stem for p in root.glob("*.py")}


def _module_name(root: Path, path: Path) -> tuple[str, str]:
    """``(dotted module name, its package)`` of a file below ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imports_of(root: Path, path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    _, package = _module_name(root, path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and not node.args[0].value.startswith(".")):
            found.add(node.args[0].value)
    return found


def violations(root: Path) -> list[str]:
    """``"file imports X"`` for every import that breaks :data:`ALLOWED`."""
    ours = _our_names(root)
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for module in sorted(imports_of(root, path)):
                top = module.split(".")[0]
                if top in ours and top not in allowed:
                    found.append(f"{path.relative_to(root)} imports {module}")
    return found


def test_the_house_keeps_its_arrows() -> None:
    assert violations(ROOT) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


CLEAN = {
    "norms/__init__.py": "import torch\nfrom . import basic\n",
    "norms/basic.py": "from .functional import layer_norm\n",
    "core/__init__.py": "",
    "core/registry.py": "import importlib\nMODULES = ('flows.kinds',)\n",
    "core/latent.py": "from norms import basic\n",
    "flows/__init__.py": "",
    "flows/kinds.py": "from core.registry import ModelKind\nKIND = 'flows.image:Flow'\n",
    "flows/sub/__init__.py": "",
    "flows/sub/deep.py": "from ..kinds import KIND\nfrom . import other\n",
    "diffusion/__init__.py": "",
    "diffusion/models.py": "def f():\n    from core.latent import LatentSpace\n",
    "trainers/__init__.py": "",
    "trainers/train.py": "from core.registry import get_model\nimport norms\n",
    "sample.py": "import flows\nimport diffusion\nimport trainers\n",
}


def test_a_clean_tree_passes(tmp_path) -> None:
    _write(tmp_path, CLEAN)
    assert violations(tmp_path) == []


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("norms/bad.py", "import core.registry\n", "norms/bad.py imports core.registry"),
        ("norms/bad.py", "import sample\n", "norms/bad.py imports sample"),
        ("core/bad.py", "def f():\n    from flows import kinds\n", "core/bad.py imports flows"),
        ("flows/bad.py", "from diffusion.models import UNet\n",
         "flows/bad.py imports diffusion.models"),
        ("flows/sub/bad.py", "def f():\n    import trainers.checkpoint\n",
         "flows/sub/bad.py imports trainers.checkpoint"),
        ("diffusion/bad.py", "import importlib\nimportlib.import_module('trainers.registry')\n",
         "diffusion/bad.py imports trainers.registry"),
        ("diffusion/bad.py", "from flows import image\n", "diffusion/bad.py imports flows"),
        ("trainers/bad.py", "if True:\n    from flows.image import Flow\n",
         "trainers/bad.py imports flows.image"),
    ],
)
def test_a_planted_violation_is_caught(tmp_path, name, text, expected) -> None:
    _write(tmp_path, {**CLEAN, name: text})
    assert expected in violations(tmp_path)


def test_relative_imports_resolve_to_their_package(tmp_path) -> None:
    _write(tmp_path, CLEAN)
    assert imports_of(tmp_path, tmp_path / "flows" / "sub" / "deep.py") >= {
        "flows.kinds", "flows.kinds.KIND", "flows.sub", "flows.sub.other"}
    assert "norms.functional" in imports_of(tmp_path, tmp_path / "norms" / "basic.py")
    assert "norms.basic" in imports_of(tmp_path, tmp_path / "norms" / "__init__.py")
