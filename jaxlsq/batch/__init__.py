"""Many independent fits at once, on top of `jaxlsq.core`.

* `solve_batch`: the `jaxlsq.solve_batch` entry point (chunks, sharding, schedule);
* `pool`: the refill pool (slots that take the next fit as theirs finishes);
* `progress`: one progress bar per call, ticked from inside the program;
* `lanes`: masked losses over a batch that leave failed fits out.
"""
