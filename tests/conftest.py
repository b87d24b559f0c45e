"""Test-wide setup.

Triton's interpreter must be switched on before any kernel is decorated, so it is set here,
before anything imports ``kernels``: CPU tensors then run the Triton kernels themselves and
the tests compare them with their pure-PyTorch references.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The test models are tiny: one intra-op thread is fastest, and it keeps the suite (and the
# subprocesses it starts, which inherit this) from oversubscribing a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence Triton 3.9's notice; keeps its default
