"""The README's self-contained examples run as written (blocks that import jax)."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.slow

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    if block.startswith("import jax")
]


def test_readme_has_runnable_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block):
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
