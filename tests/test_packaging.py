"""Packaging: what `pip install .` ships (issue 15). The repo-root ``callbacks/`` folder installs as
``advtrain.callbacks`` (no top-level ``callbacks`` package to collide in users' environments), the
named attack suites are package data, and the explicit package list of pyproject.toml names every folder."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_callbacks_install_under_advtrain():
    assert SETUPTOOLS["package-dir"] == {"advtrain.callbacks": "callbacks"}
    assert not any(p == "callbacks" or p.startswith("callbacks.") for p in SETUPTOOLS["packages"])


def test_every_package_folder_is_listed():
    """A folder left out of ``packages`` is silently not installed (the editable install hides it)."""
    folders = {".".join(p.relative_to(ROOT).parts) for p in [ROOT / "advtrain", *(ROOT / "advtrain").rglob("*")]
               if p.is_dir() and p.name != "__pycache__"}
    assert set(SETUPTOOLS["packages"]) == folders | {"advtrain.callbacks"}


def test_named_suites_are_package_data():
    from advtrain.evaluation.suite import SUITES_DIR, load_suite

    shipped = sorted(p.name for p in SUITES_DIR.iterdir() if p.name.endswith(".yaml"))
    assert "demo.yaml" in shipped and SETUPTOOLS["package-data"] == {"advtrain.evaluation.suites": ["*.yaml"]}
    assert not (ROOT / "configs" / "suites").exists()
    assert [s.attack for s in load_suite("demo")] == ["apgd_l2", "apgd_t_l2", "square_l2", "fmn_l2", "bp", "ddn",
                                                       "apgd_linf"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_config_class_paths_import(path):
    """Every ``class_path`` of a training YAML names an importable class (LightningCLI resolves them)."""
    def class_paths(node):
        if isinstance(node, dict):
            yield from ([node["class_path"]] if "class_path" in node else [])
            for value in node.values():
                yield from class_paths(value)
        elif isinstance(node, list):
            for value in node:
                yield from class_paths(value)

    for class_path in class_paths(yaml.safe_load(path.read_text())):
        module, _, name = class_path.rpartition(".")
        assert not module.startswith("callbacks."), f"{class_path}: the package is advtrain.callbacks"
        assert hasattr(importlib.import_module(module), name), class_path


def test_ops_is_the_bottom_layer():
    """``advtrain.ops`` (norms, projections, quantization) is shared by every layer and imports none."""
    for path in (ROOT / "advtrain" / "ops").glob("*.py"):
        source = path.read_text()
        assert "from .." not in source and "import advtrain" not in source and "from advtrain" not in source, path
