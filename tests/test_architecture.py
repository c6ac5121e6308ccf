"""Data and imports flow one way: core → models → converters → runtimes → verbs → cli (docs/architecture.md).

Checked twice: statically (every ``import`` of a ppdeploy module anywhere in a file, module level or inside a
function) and dynamically (each subpackage imported alone in a fresh interpreter pulls in nothing above it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ppdeploy

ROOT = Path(ppdeploy.__file__).parent
# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = {
    "core": ("errors", "fsutil", "images", "preprocess", "postprocess", "profiles", "samples", "results",
             "registry", "artifacts", "gpu", "progress"),
    "models": ("models",),
    "converters": ("converters",),
    "runtimes": ("runtimes",),
    "verbs": ("classifier", "parity", "evaluate", "foreign", "doctor", "bench", "serving", "scaleout",
              "optimize"),
    "cli": ("cli", "__init__"),
}
RANK = {top: rank for rank, tops in enumerate(LAYERS.values()) for top in tops}


def _layer(module: str) -> int:
    """Rank of ``ppdeploy.x.y`` by its first component (``ppdeploy`` itself is the package facade: cli)."""
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else "__init__"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts[:1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ppdeploy import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ppdeploy"):
            if node.module == "ppdeploy":  # from ppdeploy import x: x is a module or the package's facade
                found += [(node.lineno, f"ppdeploy.{alias.name}") for alias in node.names
                          if alias.name.split(".")[0] in RANK]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("ppdeploy.")]
    return found


def _private_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every private name imported from another ppdeploy module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ppdeploy"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]  # dunders (__version__) are public
    return found


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    tops = {_module_name(path).split(".")[1] if "." in _module_name(path) else "__init__" for path in FILES}
    assert tops <= set(RANK), f"modules without a layer (add them to LAYERS and docs/architecture.md): {tops - set(RANK)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    me = _module_name(path)
    upward = [f"line {line}: {module}" for line, module in _imports(path) if _layer(module) > _layer(me)]
    assert not upward, f"{me} ({list(LAYERS)[_layer(me)]}) imports from a layer above it: {upward}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_names(path):
    assert not _private_names(path), _private_names(path)


def test_converters_never_import_runtimes():
    """A converter verifies its artifact through the pipeline's neutral test run, not a runtime class."""
    offenders = [(str(path.relative_to(ROOT)), module) for path in (ROOT / "converters").glob("*.py")
                 for _, module in _imports(path) if module.startswith("ppdeploy.runtimes")]
    assert not offenders


def test_converter_edges_do_not_import_each_other():
    """Edges share helpers through neutral modules (onnx_graph, openvino_ir, base, accuracy), never another edge."""
    from ppdeploy.registry import targets

    edges = {target.module for target in targets().values()}
    offenders = [(_module_name(path), module) for path in (ROOT / "converters").glob("*.py")
                 for _, module in _imports(path) if module in edges and module != _module_name(path)]
    assert not offenders


ISOLATED = ["ppdeploy", "ppdeploy.registry", "ppdeploy.models", "ppdeploy.converters", "ppdeploy.runtimes",
            "ppdeploy.parity", "ppdeploy.bench", "ppdeploy.serving", "ppdeploy.scaleout", "ppdeploy.cli"]


@pytest.mark.parametrize("package", ISOLATED)
def test_subpackage_imports_alone_and_pulls_in_nothing_above_it(package):
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ppdeploy'))))")
    done = subprocess.run([sys.executable, "-c", code, package], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    above = [m for m in loaded if m != "ppdeploy" and _layer(m) > _layer(package)]
    assert not above, f"importing {package} loaded {above}"
    heavy = {"paddle", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "ray", "fastapi"}
    code_heavy = (f"import importlib, sys; importlib.import_module({package!r}); "
                  f"print(sorted(set({sorted(heavy)!r}) & set(m.split('.')[0] for m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code_heavy], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if package not in ("ppdeploy.serving", "ppdeploy.scaleout"):  # their modules are the server/cluster itself
        assert done.stdout.strip() == "[]", f"importing {package} imported {done.stdout.strip()}"
