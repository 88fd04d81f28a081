"""Every ``notebooks/*.ipynb`` executes top to bottom without errors (small sizes).

Each notebook is one test, so a new notebook is picked up by the glob. It runs in a
temporary copy (the committed notebook and its outputs are never rewritten) on a
kernel that is this interpreter (``sys.executable``), whatever ``python3`` kernel the
machine may have registered elsewhere, with ``JAXLSQ_NOTEBOOK_SMALL=1`` in its
environment: notebooks read it to pick small problem sizes.

To re-execute notebooks with their full sizes and save them in place (outputs
committed), run this file as a script::

    .venv/bin/python tests/test_notebooks.py notebooks/02_batch_fitting.ipynb ...
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")
)
CELL_TIMEOUT_S = 300  # per cell; a whole notebook takes well under a minute when small
KERNEL = "jaxlsq-this-python"


def execute(nb, cwd: pathlib.Path, kernels: pathlib.Path, *, small: bool):
    """Run ``nb`` (in place, in memory) on a kernel that is ``sys.executable``."""
    spec_dir = kernels / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    env = {"JAXLSQ_NOTEBOOK_SMALL": "1" if small else "0"}
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (jaxlsq)",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    km = AsyncKernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels])
    )
    client = nbclient.NotebookClient(
        nb,
        km=km,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        coalesce_streams=True,  # one stream output per cell, progress bars collapsed
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
    )
    try:
        client.execute()  # raises CellExecutionError, with the traceback, on failure
    finally:
        # nbclient shuts down only kernels it created itself; this one is ours. Left
        # running, each kernel keeps ~1 GB until pytest exits (and the suite then
        # crashed inside XLA's compiler, out of memory, on a loaded machine).
        if km.has_kernel:
            nbclient.util.run_sync(km.shutdown_kernel)(now=True)
    # Keep the standard kernelspec in the saved file, not this private one.
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    # The caller's XLA_FLAGS (a forced device count, say) would change what runs;
    # the suite's own flags only make the kernel's compiles faster.
    from tests import XLA_TEST_FLAGS  # (this file also runs as a script: see main)

    monkeypatch.setenv("XLA_FLAGS", XLA_TEST_FLAGS)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)  # read only: the copy lives in tmp_path
    execute(nb, tmp_path, tmp_path / "kernels", small=True)
    nbformat.write(nb, tmp_path / path.name)  # the executed copy, for inspection
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    """The committed notebook shows its results: every code cell run, in order."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.get("execution_count") for c in code]
    assert all(counts), f"{path.name}: code cells without outputs (not executed)"
    assert counts == sorted(counts), f"{path.name}: cells executed out of order"
    assert not any(
        out.get("output_type") == "error" for c in code for out in c.get("outputs", [])
    ), f"{path.name}: committed with an error output"


def main(paths: list[str]) -> None:
    """Execute notebooks with their full sizes and save them in place."""
    for name in paths:
        path = pathlib.Path(name).resolve()
        nb = nbformat.read(path, as_version=4)
        os.environ.pop("XLA_FLAGS", None)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            execute(nb, path.parent, pathlib.Path(tmp), small=False)
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {time.perf_counter() - t0:.1f} s, saved")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(p) for p in NOTEBOOKS])
