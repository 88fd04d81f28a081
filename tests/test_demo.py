"""`make demo`'s script runs end to end (small batch, no figure)."""

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

DEMO = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_runs_and_finds_the_sinusoid_global_minimum():
    out = subprocess.run(
        [sys.executable, str(DEMO), "--batch", "200", "--figure", ""],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "success: 200/200" in out.stdout, out.stdout
    ssr = [float(v) for v in re.findall(r"SSR=([0-9.]+)", out.stdout)]
    # quadratic, scipy, decay, scipy, sinusoid (local minimum), scipy, multi-start
    assert len(ssr) == 7, out.stdout
    assert ssr[0] == ssr[1] and ssr[2] == ssr[3] and ssr[4] <= ssr[5] * (1 + 1e-9)
    assert ssr[6] < 0.05 * ssr[4]  # the grid of starts escapes MINPACK's local minimum
