"""Few-shot image data: Omniglot, miniImageNet, user image folders, and safe archive handling.

Submodules are imported on use (``from fastmaml.data.omniglot import load_omniglot``) so that
importing :mod:`fastmaml.data` does not pull in Pillow or safetensors.
"""

__all__ = ["archive", "omniglot", "miniimagenet", "images"]
