"""Progress bars for batched solves: one bar per call, ticked from inside the program.

A compiled program cannot hold a Python object, so each call registers its bar under
a fresh integer *token* and passes the token into the program as a traced value
(a new token never recompiles); `tick` is a ``jax.debug.callback`` that advances the
bar of the token it is given. Two calls in flight at once (threads, or a call made
while another's results are still pending) each advance their own bar.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

_BARS: dict[int, Any] = {}
_TOKENS = itertools.count(1)
_LOCK = threading.Lock()


def _advance(token, count, _) -> None:
    bar = _BARS.get(int(token))
    if bar is not None:
        bar.update(int(count))


def tick(token: jax.Array, after: jax.Array, count: jax.Array | int = 1) -> None:
    """Advance the bar of ``token`` by ``count`` (int32 (), default 1), once
    ``after`` (any value the tick must wait for, e.g. a chunk's results) is
    computed. Call inside the program."""
    jax.debug.callback(_advance, token, jnp.asarray(count, jnp.int32), after)


def tick_finished(token: jax.Array | None, finished: jax.Array) -> None:
    """Advance the bar of ``token`` by the number of True entries of ``finished``
    (bool (P,), fits just finished), calling the host only where there are any.
    Nothing without a token."""
    if token is None:
        return
    count = jnp.sum(finished.astype(jnp.int32))
    jax.lax.cond(count > 0, lambda: tick(token, count, count), lambda: None)


def progress_ticks(n_batch: int, chunk: int | None, n_dev: int) -> int:
    """Number of ticks of a vmap-schedule batch over ``n_dev`` shards: chunks per
    shard times shards."""
    per_device = -(-n_batch // n_dev)
    chunk = chunk if chunk is not None and chunk < per_device else per_device
    return -(-per_device // chunk) * n_dev


def with_progress_bar(
    run: Callable[[jax.Array], Any], n_bars: int, desc: str, unit: str = "chunk"
) -> Any:
    """``run(token)`` with a tqdm bar of ``n_bars`` steps of ``unit``; waits for the
    results (to close the bar) and returns them."""
    if importlib.util.find_spec("tqdm") is None:
        raise ImportError("progress=True needs tqdm: pip install tqdm")
    # tqdm.auto draws a widget in Jupyter but only warns ("IProgress not found")
    # without ipywidgets; the plain text bar works everywhere.
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    with _LOCK:
        token = next(_TOKENS)
    with tqdm(total=n_bars, unit=unit, desc=desc) as bar:
        _BARS[token] = bar
        try:
            out = jax.block_until_ready(run(jnp.asarray(token, jnp.int32)))
            jax.effects_barrier()  # every tick delivered before the bar closes
        finally:
            del _BARS[token]
    return out
