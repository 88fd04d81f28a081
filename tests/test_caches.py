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


def test_a_warm_fit_does_not_check_its_model_again(monkeypatch):
    """`fit`'s model check (`one_output`: ``jax.eval_shape``, ~0.2 ms even when
    JAX's trace cache hits) is cached like the residual count: a fit on new data
    of the same shapes does not repeat it; a new shape does."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlsq

    calls = []
    eval_shape = jax.eval_shape

    def counted(fn, *args, **kwargs):
        calls.append(fn)
        return eval_shape(fn, *args, **kwargs)

    def model(x, p):
        return p[0] * jnp.exp(-p[1] * x)

    monkeypatch.setattr(jax, "eval_shape", counted)
    x = np.linspace(0.0, 3.0, 40)
    p0 = np.array([1.0, 1.0])
    jaxlsq.fit(model, x, 2.0 * np.exp(-0.7 * x), p0)
    assert model in calls  # checked once
    calls.clear()
    fitted = jaxlsq.fit(model, x, 3.0 * np.exp(-0.9 * x), p0)
    assert model not in calls
    np.testing.assert_allclose(fitted.params, [3.0, 0.9], rtol=1e-8)
    jaxlsq.fit(model, x[:30], 3.0 * np.exp(-0.9 * x[:30]), p0)
    assert model in calls
