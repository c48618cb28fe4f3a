"""plsweep: learning rate and batch size for a large LM run from many small muP proxy runs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plsweep")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
