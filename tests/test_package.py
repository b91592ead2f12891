"""The package's face: lazy top-level exports and a layout that imports without cycles."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import comprexit_rag
from comprexit_rag.backbone import Backbone

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "comprexit_rag"


def test_every_public_name_resolves_and_importing_the_package_stays_light():
    for name in comprexit_rag.__all__:
        assert getattr(comprexit_rag, name) is not None, name
    code = (
        "import sys\nimport comprexit_rag\nassert 'torch' not in sys.modules\n"
        "from comprexit_rag import RAGPipeline, SlotService, ComprExITCompressor\n"
        "from comprexit_rag.rag import RAGPipeline as Direct\nassert RAGPipeline is Direct\nprint('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout == "ok\n", done.stderr


def test_every_module_imports_on_its_own():
    skipped = {"comprexit_rag.testing"}  # needs pytest, which the package does not depend on
    names = [m.name for m in pkgutil.walk_packages(comprexit_rag.__path__, "comprexit_rag.") if m.name not in skipped]
    for name in names:
        importlib.import_module(name)
    assert "comprexit_rag.rag.pipeline" in names and "comprexit_rag.methods.comprexit.head" in names


def test_no_library_file_is_over_about_four_hundred_lines():
    sizes = {path: len(path.read_text().splitlines()) for path in (ROOT / "comprexit_rag").rglob("*.py")}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda item: -item[1])[:3]


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _unsafe_calls(tree: ast.AST, path: Path) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{path}:{node.lineno}: imports {name}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = ast.unparse(func)
            keywords = {kw.arg: kw.value for kw in node.keywords}
            constant = {key: value.value for key, value in keywords.items() if isinstance(value, ast.Constant)}
            if name == "torch.load" and constant.get("weights_only") is not True:
                found.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
            if name.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle") is not None:
                found.append(f"{path}:{node.lineno}: numpy load with allow_pickle")
            if name.endswith("read_pickle") or name.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{path}:{node.lineno}: {name}")
            remote = keywords.get("trust_remote_code")
            if isinstance(remote, ast.Constant) and remote.value is not False:
                found.append(f"{path}:{node.lineno}: trust_remote_code={remote.value}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
            defaults += list(node.args.kw_defaults)
            for argument, default in zip(arguments, defaults, strict=True):
                safe = isinstance(default, ast.Constant) and default.value is False
                if argument.arg == "trust_remote_code" and not safe:
                    found.append(f"{path}:{node.lineno}: {node.name}(trust_remote_code) does not default to False")
    return found


def test_package_source_has_no_unsafe_deserialisation():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        problems += _unsafe_calls(ast.parse(source), path.relative_to(PACKAGE.parent))
        if "torch.load(" in source:  # belt and braces: the text form too (e.g. aliased imports)
            for number, line in enumerate(source.splitlines(), start=1):
                if "torch.load(" in line and "weights_only=True" not in line:
                    problems.append(f"{path.name}:{number}: torch.load( without weights_only=True on the line")
    assert problems == []
    # The scanner does catch what it looks for.
    bad = ast.parse(
        "import pickle\nimport torch\ntorch.load('x')\nf(trust_remote_code=True)\ndef g(trust_remote_code=True): ..."
    )
    assert len(_unsafe_calls(bad, Path("bad.py"))) == 4
    assert inspect.signature(Backbone.from_pretrained).parameters["trust_remote_code"].default is False
