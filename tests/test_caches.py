"""jaxlsq's caches: bounded, and weak on the user's functions."""

from __future__ import annotations

import gc
import weakref

from jaxlsq._testing import BoundedCache, caches


def test_bounded_least_recently_used_first():
    cache = BoundedCache(3)

    def f():
        pass

    for i in range(3):
        cache.put((f, i), i)
    assert cache.get((f, 0)) == 0  # now the most recently used
    cache.put((f, 3), 3)
    assert len(cache) == 3
    assert cache.get((f, 1)) is None  # the least recently used went
    assert [cache.get((f, i)) for i in (0, 2, 3)] == [0, 2, 3]


def test_a_collected_function_leaves_the_cache():
    cache = BoundedCache(10)

    def make():
        big = list(range(10_000))  # a closure the cache must not keep alive
        return lambda: big

    fun = make()
    alive = weakref.ref(fun)
    cache.put((fun, "shape"), 7)
    assert cache.get((fun, "shape")) == 7
    del fun
    gc.collect()
    assert alive() is None  # the cache held no strong reference
    cache.put((len, "other"), 1)  # entries of collected functions are purged here
    assert len(cache) == 1


def test_functions_without_weak_references_are_held_within_the_bound():
    cache = BoundedCache(2)
    for i, builtin in enumerate((len, abs, max)):  # builtins: no weakref support
        cache.put((builtin, i), i)
    assert len(cache) == 2 and cache.get((max, 2)) == 2


def test_every_cache_is_bounded_and_can_be_cleared():
    assert caches.ALL and all(c.maxsize <= 4096 for c in caches.ALL)
    caches.RESIDUAL_SIZES.put((len, "x"), 1)
    caches.clear_all()
    assert all(len(c) == 0 for c in caches.ALL)
