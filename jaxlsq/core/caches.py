"""The one kind of cache in jaxlsq: bounded, thread-safe, weak on user functions.

jaxlsq caches what it learns about a user's function outside JAX's own jit cache
(the number of residuals, whether JAX can trace it, which host problem it is) so that
a warm call does not trace it again. Every such cache is a `BoundedCache`:

* bounded: least recently used entries are dropped past ``maxsize``;
* weak: the first element of a key, the user's function, is held through a
  ``weakref`` when the function allows one (plain functions, lambdas, bound methods'
  owners, frozen dataclasses), so a cache never keeps a function (and its closure)
  alive; its entries go when it does. Functions that cannot be weakly referenced
  (some builtins) are held strongly, within the bound.
"""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Any

_MISSING = object()


class BoundedCache:
    """An LRU mapping from ``(fun, *rest)`` keys to values (see the module doc).

    Parameters
    ----------
    maxsize : int
        Most entries kept.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._dead: list = []  # refs of collected functions, purged on the next put

    def _key(self, key: tuple, create: bool):
        head, rest = key[0], key[1:]
        try:
            ref = weakref.ref(head, self._forget) if create else weakref.ref(head)
        except TypeError:  # not weakly referenceable: keep it (bounded)
            ref = head
        return (ref, *rest)

    def _forget(self, ref) -> None:
        # Called by the garbage collector, possibly while this thread holds the
        # lock: only record the ref (list.append is atomic); `put` purges.
        self._dead.append(ref)

    def _purge(self) -> None:
        dead, self._dead = self._dead, []
        if dead:
            gone = {id(ref) for ref in dead}
            for key in [k for k in self._data if id(k[0]) in gone]:
                del self._data[key]

    def get(self, key: tuple, default: Any = None) -> Any:
        """The value for ``key`` (marked recently used), or ``default``."""
        k = self._key(key, create=False)
        with self._lock:
            value = self._data.get(k, _MISSING)
            if value is _MISSING:
                return default
            self._data.move_to_end(k)
            return value

    def put(self, key: tuple, value: Any) -> None:
        """Store ``value`` for ``key``; drop the oldest entries past ``maxsize``."""
        k = self._key(key, create=True)
        with self._lock:
            self._purge()
            self._data[k] = value
            self._data.move_to_end(k)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


# ----------------------------------------------------------------------------------
# every cache of the package (keys: the user's function first)

#: (fun, x0 signature, args signature) -> number of residuals m (`jaxlsq.solve`).
RESIDUAL_SIZES = BoundedCache(4096)
#: (fn, call, args signature) -> the ShapeDtypeStruct of ``fn(*args)``
#: (`jaxlsq.core.validate.one_output`: `fit`'s model check).
OUTPUT_SHAPES = BoundedCache(1024)
#: (func, Dfun, col_deriv, n, args signature) -> the scipy shims' path: a plan of
#: the JAX path, or "host".
SHIM_PLANS = BoundedCache(512)
#: (func,) -> True once its HostFallbackWarning was shown.
HOST_WARNED = BoundedCache(4096)
#: (jac, n, args signature) -> (shape or None, error): can JAX trace a user jac.
JAC_TRACES = BoundedCache(512)
#: (func, Dfun, col_deriv, m, n) -> the host path's HostProblem (one instance per
#: problem, so its bound methods stay equal and nothing recompiles).
HOST_PROBLEMS = BoundedCache(256)

#: (loss, m) -> the loss `least_squares`' loop gets for a callable loss (itself, or
#: its host wrapper): traced once, not on every call.
LOSS_TRACES = BoundedCache(256)

ALL = (
    RESIDUAL_SIZES,
    OUTPUT_SHAPES,
    SHIM_PLANS,
    HOST_WARNED,
    JAC_TRACES,
    HOST_PROBLEMS,
    LOSS_TRACES,
)


def clear_all() -> None:
    """Empty every jaxlsq cache (JAX's own compilation cache is not touched)."""
    for cache in ALL:
        cache.clear()
