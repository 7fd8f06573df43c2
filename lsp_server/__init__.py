"""Diffill's language server: inline ghost-text completions over LSP from the in-process engine.

Imports no torch: the model is loaded by the engine worker thread after ``initialize``.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version (the server does not import the command line)
    __version__ = version("diffill")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
