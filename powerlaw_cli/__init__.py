"""plsweep: learning rate and batch size for a large LM run from many small muP proxy runs."""

import os

# numpy's and scipy's OpenBLAS threads only contend on the small matrices of a fit (scipy's L-BFGS-B
# ran 70x slower with them on a busy 2-core machine); set before numpy loads, unless the user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata when first asked for: importlib.metadata
    costs ~35 ms, which every command and every worker would pay at startup."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plsweep")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+unknown"
