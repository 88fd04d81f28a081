"""The test suite (``make test``).

``XLA_TEST_FLAGS`` are the XLA flags every test process runs with (set by
``conftest.py`` before JAX starts, and passed on to the subprocesses and notebook
kernels the tests start). The suite is compile-bound: XLA's CPU backend compile was
~80% of its time, and half of each compile went to the MLIR fusion emitters. The
classic LLVM IR emitters compile the same programs about twice as fast, and they run
them at the same speed (``python benchmarks/program_size.py --emitters``). The flag
changes how XLA emits kernels, not what they compute. Set ``XLA_FLAGS`` yourself to
run the suite with other flags: conftest then adds nothing.
"""

XLA_TEST_FLAGS = "--xla_cpu_use_fusion_emitters=false"
