"""Diffill's language server: inline ghost-text completions over LSP from the in-process engine.

Imports no torch: the model is loaded by the engine worker thread after ``initialize``.
"""

from diffill import __version__

__all__ = ["__version__"]
