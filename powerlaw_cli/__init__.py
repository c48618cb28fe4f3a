"""plsweep: learning rate and batch size for a large LM run from many small muP proxy runs."""

import os
from importlib.metadata import PackageNotFoundError, version

# numpy's and scipy's OpenBLAS threads only contend on the small matrices of a fit (scipy's L-BFGS-B
# ran 70x slower with them on a busy 2-core machine); set before numpy loads, unless the user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("plsweep")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
