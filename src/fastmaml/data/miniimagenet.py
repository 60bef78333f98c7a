"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split.

The split CSVs (``train.csv``, ``val.csv``, ``test.csv``; header ``filename,label``, label =
ImageNet wnid) list 600 images for each of 64 / 16 / 20 classes. The images themselves come
from an image pack (84x84 JPEGs, ImageNet terms of use) that the user supplies, laid out
either flat (``images/n0153282900000005.jpg``) or in per-class folders
(``images/n01532829/n0153282900000005.jpg``, also one level down as in packs split into
``train/<wnid>/`` and ``val/<wnid>/``); all are found. Images of another size are
resized (bilinear) to ``image_size``.

Decoded splits are cached as safetensors files, keyed by the CSV checksum, the image files'
sizes and times, the image size and the images per class.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastmaml.data.archive import default_cache_dir, hash_listing, load_cache, save_cache
from fastmaml.data.images import read_image
from fastmaml.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
_CACHE_VERSION = "1"


@dataclass
class MiniImageNetSplit:
    """One split as a class-major tensor.

    Attributes:
        images: uint8 ``[n_classes, n_per_class, 3, H, W]``.
        wnids: ImageNet wnid of each class, in CSV order.
        split: ``"train"``, ``"val"``, ``"test"`` (or the CSV's stem).
    """

    images: torch.Tensor
    wnids: list[str]
    split: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def read_split_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parse a ``filename,label`` CSV into ``{wnid: [filenames...]}`` (classes and files in file order)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split file {path} not found; get train.csv/val.csv/test.csv of the Ravi & Larochelle split "
            "(twitter-research/meta-learning-lstm, data/miniImagenet/) and put them there"
        )
    classes: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["filename", "label"]:
            raise DataError(
                f"{path}: header is {header!r}, expected 'filename,label'; this is not a Ravi & Larochelle split CSV"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{path}, line {lineno}: expected 'filename,label', got {','.join(row)!r}")
            classes.setdefault(row[1].strip(), []).append(row[0].strip())
    if not classes:
        raise DataError(f"{path}: the split CSV has no rows")
    return classes


def _index_images(images_dir: Path, wnids: list[str]) -> tuple[dict[str, Path], dict[tuple[str, str], Path]]:
    """Maps of flat file names and (wnid, file name) pairs to paths; one listdir per folder.

    Per-class folders are found at the top (``<wnid>/``) and one level down (``train/<wnid>/``,
    ``val/<wnid>/``): packs that ship their own per-class split spread one class over several
    such folders, and the few-shot class split comes from the CSVs anyway.
    """
    flat: dict[str, Path] = {}
    nested: dict[tuple[str, str], Path] = {}
    wanted = set(wnids)
    parents = [images_dir]
    with os.scandir(images_dir) as it:
        for e in it:
            if e.is_file():
                flat[e.name] = Path(e.path)
            elif e.is_dir() and e.name not in wanted:
                parents.append(Path(e.path))
    for parent in parents:
        for w in wnids:
            d = parent / w
            if d.is_dir():
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_file():
                            nested.setdefault((w, e.name), Path(e.path))
    return flat, nested


def resolve_images(
    images_dir: str | os.PathLike, classes: dict[str, list[str]]
) -> dict[str, list[Path]]:
    """Find every CSV file name under ``images_dir`` (flat or per-class); DataError lists missing ones."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(
            f"miniImageNet image folder {images_dir} not found; unpack an 84x84 miniImageNet image pack "
            "there (files named as in the split CSVs, flat or in per-class folders)"
        )
    if (images_dir / "images").is_dir():
        images_dir = images_dir / "images"
    flat, nested = _index_images(images_dir, list(classes))
    found: dict[str, list[Path]] = {}
    missing: list[str] = []
    for w, names in classes.items():
        paths = []
        for n in names:
            p = nested.get((w, n)) or flat.get(n)
            if p is None:
                missing.append(n)
            else:
                paths.append(p)
        found[w] = paths
    if missing:
        shown = ", ".join(missing[:5])
        raise DataError(
            f"{images_dir}: {len(missing)} image(s) listed in the split CSV are missing (first: {shown}); "
            "check that the image pack is complete and laid out as images/<file>, images/<wnid>/<file> or "
            "<any>/<wnid>/<file>"
        )
    return found


def decode_split(
    files: dict[str, list[Path]], image_size: int = 84, images_per_class: int | None = None
) -> torch.Tensor:
    """Decode resolved files into uint8 ``[n_classes, n, 3, image_size, image_size]``."""
    counts = {w: len(p) for w, p in files.items()}
    n = images_per_class
    if n is None:
        if len(set(counts.values())) != 1:
            w_min = min(counts, key=counts.get)
            raise DataError(
                f"classes have different numbers of images (e.g. {w_min} has {counts[w_min]}); "
                "pass images_per_class to use the same number from each"
            )
        n = next(iter(counts.values()))
    small = [w for w, c in counts.items() if c < n]
    if small:
        raise DataError(
            f"class {small[0]} has {counts[small[0]]} images, fewer than images_per_class={n} "
            f"({len(small)} class(es) too small)"
        )
    out = np.empty((len(files), n, 3, image_size, image_size), dtype=np.uint8)
    for ci, paths in enumerate(files.values()):
        for i, p in enumerate(paths[:n]):
            out[ci, i] = read_image(p, image_size, 3)
    return torch.from_numpy(out)


def _cache_key(csv_path: Path, files: dict[str, list[Path]], image_size: int, n: int | None) -> str:
    h = hashlib.sha256(csv_path.read_bytes())
    h.update(f"{image_size}:{n}:{_CACHE_VERSION}\n".encode())
    hash_listing(h, ((f"{w}/{p.name}", p) for w, paths in files.items() for p in paths))
    return h.hexdigest()


def load_miniimagenet(
    images_dir: str | os.PathLike,
    split: str,
    splits_dir: str | os.PathLike,
    image_size: int = 84,
    *,
    images_per_class: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> MiniImageNetSplit:
    """Load one split (``train``/``val``/``test`` or the stem of any ``filename,label`` CSV).

    ``images_dir``: folder with the images (flat or per-class; an ``images/`` subfolder is used
    if present). ``splits_dir``: folder with ``<split>.csv``. ``images_per_class``: use the first
    N rows of each class (default: all, which must be equal across classes).
    """
    csv_path = Path(splits_dir) / f"{split}.csv"
    classes = read_split_csv(csv_path)
    files = resolve_images(images_dir, classes)
    if not use_cache:
        return MiniImageNetSplit(decode_split(files, image_size, images_per_class), list(files), split)
    key = _cache_key(csv_path, files, image_size, images_per_class)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir("miniimagenet")
    path = cache / f"miniimagenet-{split}-{image_size}px-{key[:16]}.safetensors"
    hit = load_cache(path)
    if hit is not None and hit[1].get("key") == key:
        return MiniImageNetSplit(hit[0]["images"], hit[1]["wnids"], split)
    images = decode_split(files, image_size, images_per_class)
    save_cache(path, {"images": images}, {"key": key, "wnids": list(files)})
    return MiniImageNetSplit(images, list(files), split)
