"""Many independent fits at once, on top of `jaxlsq.core`.

* `solve_batch`: the `jaxlsq.solve_batch` entry point (chunks, sharding, progress);
* `pool`: the refill pool (slots that take the next fit as theirs finishes);
* `lanes`: masked losses over a batch that leave failed fits out.
"""
