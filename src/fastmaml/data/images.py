"""Load your own images: a labelled folder (one subfolder per class) or an unlabelled list.

Any common format Pillow reads (png, jpg/jpeg, bmp, gif (first frame), webp), any size;
images are turned upright from their EXIF orientation, converted to grayscale (``channels=1``)
or RGB (``channels=3``) and resized to ``size`` with bilinear filtering (aspect ratio is not
kept, as in the miniImageNet packs); ``resample="lanczos"`` resizes as the Omniglot loader does, so a
model meta-trained on Omniglot sees user images prepared like its training data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from fastmaml.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def read_image(
    path: str | os.PathLike,
    size: int | tuple[int, int],
    channels: int = 3,
    *,
    invert: bool = False,
    resample: str = "bilinear",
) -> np.ndarray:
    """One image as uint8 ``[channels, H, W]``; ``invert`` maps ``x -> 255 - x`` (dark ink to bright).

    ``resample``: ``"bilinear"`` or ``"lanczos"`` (the Omniglot loader's filter).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    h, w = _size_hw(size)
    filters = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}
    if resample not in filters:
        raise DataError(f"resample must be one of {sorted(filters)}, got {resample!r}")
    try:
        with Image.open(path) as im:
            im.seek(0)  # first frame of animated gif/webp
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), filters[resample])
            a = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({e}); the file is corrupt or not an image, remove or replace it") from e
    if invert:
        a = 255 - a
    return a[None] if channels == 1 else np.ascontiguousarray(a.transpose(2, 0, 1))


def _to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Floats are scaled to [0, 1]; uint8 stays 0..255.
    return x if dtype == torch.uint8 else x.to(dtype).div_(255.0)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (by extension, sorted, hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def load_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    size: int | tuple[int, int] = 84,
    channels: int = 3,
    *,
    dtype: torch.dtype = torch.float32,
    invert: bool = False,
    resample: str = "bilinear",
) -> tuple[torch.Tensor, list[Path]]:
    """Unlabelled images (e.g. a query folder) as ``[N, channels, H, W]`` plus their paths.

    ``paths`` is a folder (its images, sorted) or a list of files. Float dtypes are in ``[0, 1]``.
    """
    if isinstance(paths, (str, os.PathLike)) and Path(paths).is_dir():
        files = list_images(paths)
        if not files:
            raise DataError(
                f"{paths}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    elif isinstance(paths, (str, os.PathLike)):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
        if not files:
            raise DataError("load_images got an empty list of paths")
    h, w = _size_hw(size)
    out = np.empty((len(files), channels, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = read_image(f, (h, w), channels, invert=invert, resample=resample)
    return _to_dtype(torch.from_numpy(out), dtype), files


@dataclass
class LabeledImages:
    """Images of a class-per-folder tree.

    Attributes:
        x: ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]).
        y: ``[N]`` int64 class index into ``classes``.
        classes: class (folder) names, sorted.
        paths: file of each image.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    paths: list[Path]

    def per_class(self) -> list[torch.Tensor]:
        """One tensor per class (counts may differ), ready for :class:`fastmaml.tasks.EpisodeSampler`."""
        return [self.x[self.y == c] for c in range(len(self.classes))]

    def counts(self) -> list[int]:
        """Number of images of each class."""
        return torch.bincount(self.y, minlength=len(self.classes)).tolist()


def load_image_folder(
    root: str | os.PathLike,
    size: int | tuple[int, int] = 84,
    channels: int = 3,
    *,
    dtype: torch.dtype = torch.float32,
    invert: bool = False,
    classes: Sequence[str] | None = None,
    resample: str = "bilinear",
) -> LabeledImages:
    """Load ``root/<class>/<image>`` into a :class:`LabeledImages`.

    ``classes`` picks and orders class folders (default: all subfolders, sorted).
    Raises :class:`DataError` when there are no class folders, a class folder has no images,
    or an image cannot be read (naming it).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    if classes is None:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(
                f"{root}: no class folders found; put each class's images in its own subfolder, "
                f"e.g. {root / 'cat' / 'img1.jpg'}"
            )
    else:
        class_dirs = [root / c for c in classes]
        missing = [str(p) for p in class_dirs if not p.is_dir()]
        if missing:
            raise DataError(f"class folder(s) not found: {', '.join(missing)}")
    files: list[Path] = []
    labels: list[int] = []
    for ci, d in enumerate(class_dirs):
        imgs = list_images(d)
        if not imgs:
            raise DataError(
                f"{d}: class folder has no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        files += imgs
        labels += [ci] * len(imgs)
    x, _ = load_images(files, size, channels, dtype=dtype, invert=invert, resample=resample)
    return LabeledImages(x, torch.tensor(labels, dtype=torch.long), [d.name for d in class_dirs], files)
