"""Diffill: inline code completion from masked-diffusion fill-in-the-middle models."""

__version__ = "0.1.0"
