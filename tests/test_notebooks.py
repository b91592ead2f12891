"""Execute the example notebooks in examples/ with nbclient; any cell error fails the test.

Marked ``notebook`` (each notebook loads the real embedded SmolLM2 on CPU and takes a minute or
more): deselect them with ``-m "not notebook"``. A notebook whose optional integration package is
not installed is skipped, naming the package and how to install it. The notebooks read HotpotQA
from ``comprexit_rag.data.data_root()`` (``COMPREXIT_DATA``); without data they are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CELL_TIMEOUT_S = 600

# notebook -> (import name of the optional package it needs, how to install it)
REQUIRES: dict[str, tuple[str, str]] = {
    "02_langchain.ipynb": ("langchain_comprexit", "./scripts/install.sh"),
    "03_llama_index.ipynb": ("llama_index.postprocessor.comprexit", "./scripts/install.sh"),
}
NOTEBOOKS = sorted(path.name for path in EXAMPLES.glob("[0-9][0-9]_*.ipynb"))


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _skip_reason(name: str) -> str | None:
    from comprexit_rag.data import DataNotFoundError, data_root

    requirement = REQUIRES.get(name)
    if requirement is not None and not _importable(requirement[0]):
        return f"{name} needs {requirement[0]}, which is not importable ({requirement[1]})"
    try:
        data_root()
    except DataNotFoundError as error:
        return f"{name} needs the HotpotQA data: {error}"
    return None


def test_every_example_notebook_is_collected():
    expected = {"01_quickstart.ipynb", "02_langchain.ipynb", "03_llama_index.ipynb", "04_inside_the_compressor.ipynb"}
    assert expected <= set(NOTEBOOKS)


def test_notebooks_match_their_generator():
    """The committed notebooks are exactly what examples/_build_notebooks.py writes."""
    spec = importlib.util.spec_from_file_location("_build_notebooks", EXAMPLES / "_build_notebooks.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.main(["--check"]) == 0, "run python examples/_build_notebooks.py and commit the notebooks"


def test_notebooks_are_committed_executed():
    """A reader sees the results without running anything: every code cell ran, in order, without error."""
    for name in NOTEBOOKS:
        notebook = nbformat.read(EXAMPLES / name, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        counts = [cell.execution_count for cell in code]
        assert counts == list(range(1, len(code) + 1)), (
            f"{name}: not executed in order; run examples/_build_notebooks.py"
        )
        for cell in code:
            assert all(output.output_type != "error" for output in cell.outputs), f"{name}: a cell failed"
        assert any(cell.outputs for cell in code), f"{name}: no outputs"


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str) -> None:
    reason = _skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    env_backup = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the kernel inherits it: the notebooks must run offline
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},  # cwd of the kernel
        allow_errors=False,
    )
    started = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name} failed after {time.perf_counter() - started:.0f} s:\n{error}")
    finally:
        if env_backup is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env_backup
    print(f"{name}: {time.perf_counter() - started:.0f} s")
