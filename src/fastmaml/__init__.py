"""fastmaml: fast, vectorized Model-Agnostic Meta-Learning on PyTorch."""

__version__ = "0.1.0"
