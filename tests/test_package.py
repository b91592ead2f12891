"""The package's face: lazy top-level exports and a layout that imports without cycles."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import comprexit_rag

ROOT = Path(__file__).resolve().parents[1]


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
