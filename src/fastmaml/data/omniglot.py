"""Omniglot (Lake et al. 2015) for few-shot classification, as used by the MAML paper.

Reads the two official archives (``images_background.zip``, ``images_evaluation.zip``)
directly with :mod:`zipfile` (nothing is extracted to disk) or the same folders already
extracted. Images are converted to grayscale, resized to ``image_size`` (28 in the paper)
with Lanczos filtering and **inverted so that ink is bright (255) on a black (0) background**,
as Finn et al.'s code did (``1 - x``) so that empty background is 0 after scaling to [0, 1].

Decoded sets are cached as safetensors files keyed by the source's checksum and the image
size, so later starts only memory-map a file.

Layout inside a zip or folder: ``[images_background/]<Alphabet>/characterNN/<CCCC>_<DD>.png``,
20 drawings per character, 105x105 pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import torch

from fastmaml.data.archive import (
    default_cache_dir, download, hash_listing, load_cache, save_cache, sha256_file, verify_sha256,
)
from fastmaml.errors import DataError

SETS = ("background", "evaluation")
OFFICIAL_URLS = {
    "background": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "evaluation": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
# md5 of the official zips (brendenlake/omniglot).
OFFICIAL_MD5 = {
    "background": "68d2efa1b9178cc56df9314c21c6e718",
    "evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
NUM_CHARACTERS = {"background": 964, "evaluation": 659}
DRAWINGS_PER_CHARACTER = 20
ORIGINAL_SIZE = 105
_CACHE_VERSION = "1"


@dataclass
class OmniglotData:
    """Characters of Omniglot as a class-major image tensor plus metadata.

    Attributes:
        images: uint8 ``[n_characters, 20, H, W]``; ink = 255, background = 0.
        alphabets: alphabet folder name of each character.
        characters: character folder name (``characterNN``) of each character.
        sets: ``"background"`` or ``"evaluation"`` for each character.
        rotations: rotation in degrees (0/90/180/270) applied to each class.
    """

    images: torch.Tensor
    alphabets: list[str]
    characters: list[str]
    sets: list[str]
    rotations: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rotations:
            self.rotations = [0] * len(self.alphabets)
        n = self.images.shape[0]
        if not (len(self.alphabets) == len(self.characters) == len(self.sets) == len(self.rotations) == n):
            raise DataError(f"OmniglotData metadata lengths do not match the {n} classes in images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def names(self) -> list[str]:
        """``"Alphabet/characterNN"`` (with ``@<deg>`` when rotated) for each class."""
        return [
            f"{a}/{c}" + (f"@{r}" if r else "")
            for a, c, r in zip(self.alphabets, self.characters, self.rotations)
        ]

    def subset(self, index: Iterable[int]) -> "OmniglotData":
        """The classes at ``index``, in that order."""
        idx = list(index)
        return OmniglotData(
            self.images[torch.as_tensor(idx, dtype=torch.long)] if idx else self.images[:0],
            [self.alphabets[i] for i in idx],
            [self.characters[i] for i in idx],
            [self.sets[i] for i in idx],
            [self.rotations[i] for i in idx],
        )

    @staticmethod
    def concat(parts: list["OmniglotData"]) -> "OmniglotData":
        """Classes of all ``parts``, in order."""
        return OmniglotData(
            torch.cat([p.images for p in parts]),
            [a for p in parts for a in p.alphabets],
            [c for p in parts for c in p.characters],
            [s for p in parts for s in p.sets],
            [r for p in parts for r in p.rotations],
        )


# ----------------------------------------------------------------------------- sources


def _missing_message(root: Path, set_name: str) -> str:
    return (
        f"Omniglot {set_name} set not found: expected {root / f'images_{set_name}.zip'} or the extracted "
        f"folder {root / f'images_{set_name}'}/. Put the official images_{set_name}.zip there, or, with a "
        f"network connection, download it with fastmaml.data.omniglot.download_omniglot({str(root)!r}) "
        f"(from {OFFICIAL_URLS[set_name]})."
    )


def find_source(root: str | os.PathLike, set_name: str) -> Path:
    """Path of the zip (preferred) or extracted folder of one Omniglot set under ``root``."""
    if set_name not in SETS:
        raise DataError(f"unknown Omniglot set {set_name!r}; use one of {SETS}")
    root = Path(root)
    zip_path = root / f"images_{set_name}.zip"
    if zip_path.is_file():
        return zip_path
    folder = root / f"images_{set_name}"
    if folder.is_dir():
        return folder
    raise DataError(_missing_message(root, set_name))


def _list_pngs_zip(zf: zipfile.ZipFile, source: Path) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for name in zf.namelist():
        if name.endswith("/") or not name.lower().endswith(".png"):
            continue
        parts = name.split("/")
        if "__MACOSX" in parts or parts[-1].startswith("."):
            continue
        if len(parts) < 3:
            raise DataError(
                f"{source}: member {name!r} is not inside <Alphabet>/<character>/ folders; "
                "is this the official Omniglot zip?"
            )
        groups.setdefault((parts[-3], parts[-2]), []).append(name)
    return groups


def _list_pngs_folder(folder: Path) -> dict[tuple[str, str], list[str]]:
    # Accept both <folder>/<Alphabet>/... and <folder>/images_xxx/<Alphabet>/...
    inner = folder / folder.name
    base = inner if inner.is_dir() else folder
    groups: dict[tuple[str, str], list[str]] = {}
    alphabets = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    for alpha in alphabets:
        chars = sorted(p for p in alpha.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not chars:
            raise DataError(f"{alpha}: alphabet folder has no character folders; re-extract or re-download Omniglot")
        for char in chars:
            groups[(alpha.name, char.name)] = [
                str(p) for p in char.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")
            ]
    return groups


def _decode(data: bytes, member: str, source: Path, image_size: int, allow_any_size: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.size != (ORIGINAL_SIZE, ORIGINAL_SIZE) and not allow_any_size:
                raise DataError(
                    f"{source}: image {member!r} is {im.size[0]}x{im.size[1]}, expected "
                    f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE}; the data is not the official Omniglot (pass "
                    "allow_any_size=True to resize it anyway)"
                )
            gray = im.convert("L")
            if gray.size != (image_size, image_size):
                gray = gray.resize((image_size, image_size), Image.LANCZOS)
            return 255 - np.asarray(gray, dtype=np.uint8)  # invert: ink bright, background 0
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{source}: cannot decode image {member!r} ({e}); the file is corrupt, delete it and re-download Omniglot"
        ) from e


def decode_omniglot_set(
    source: str | os.PathLike,
    set_name: str,
    image_size: int = 28,
    *,
    allow_any_size: bool = False,
    characters: int | None = None,
) -> OmniglotData:
    """Decode one Omniglot set from a zip or extracted folder (no caching).

    ``characters`` limits decoding to the first N characters (sorted order), for quick tests.
    """
    source = Path(source)
    if source.is_file():
        try:
            zf = zipfile.ZipFile(source)
        except zipfile.BadZipFile as e:
            raise DataError(f"{source}: not a valid zip file ({e}); delete it and re-download it") from e
    elif source.is_dir():
        zf = None
    else:
        raise DataError(f"{source}: not found")
    try:
        groups = _list_pngs_zip(zf, source) if zf is not None else _list_pngs_folder(source)
        if not groups:
            raise DataError(
                f"{source}: contains no Omniglot PNGs (expected <Alphabet>/characterNN/*.png); "
                "the set is empty or the wrong file; re-download Omniglot"
            )
        keys = sorted(groups)
        if characters is not None:
            keys = keys[:characters]
        out = np.empty((len(keys), DRAWINGS_PER_CHARACTER, image_size, image_size), dtype=np.uint8)
        for ci, key in enumerate(keys):
            members = sorted(groups[key])
            if len(members) != DRAWINGS_PER_CHARACTER:
                raise DataError(
                    f"{source}: character {key[0]}/{key[1]} has {len(members)} drawings, expected "
                    f"{DRAWINGS_PER_CHARACTER}; the data is incomplete, re-download Omniglot"
                )
            for di, member in enumerate(members):
                if zf is not None:
                    try:
                        raw = zf.read(member)
                    except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC error, truncated zip
                        raise DataError(
                            f"{source}: cannot read member {member!r} ({e}); the zip is corrupt, "
                            "delete it and re-download it"
                        ) from e
                else:
                    raw = Path(member).read_bytes()
                out[ci, di] = _decode(raw, member, source, image_size, allow_any_size)
    finally:
        if zf is not None:
            zf.close()
    return OmniglotData(
        torch.from_numpy(out),
        [k[0] for k in keys],
        [k[1] for k in keys],
        [set_name] * len(keys),
    )


# ----------------------------------------------------------------------------- cache


def _source_key(source: Path) -> str:
    if source.is_file():
        return sha256_file(source)
    # Extracted folder: hash the listing (paths, sizes, mtimes): cheap and changes with the data.
    h = hashlib.sha256()
    hash_listing(h, ((str(p.relative_to(source)), p) for p in sorted(source.rglob("*.png"))))
    return h.hexdigest()


def load_omniglot_set(
    source: str | os.PathLike,
    set_name: str,
    image_size: int = 28,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    sha256: str | None = None,
    allow_any_size: bool = False,
) -> OmniglotData:
    """Load one set (zip or folder), decoding once and caching the result.

    ``sha256``: if given, the zip must have this checksum (else :class:`DataError`).
    ``cache_dir``: where the decoded cache lives (default :func:`default_cache_dir` ``("omniglot")``).
    """
    source = Path(source)
    if not source.exists():
        raise DataError(_missing_message(source.parent, set_name))
    if sha256 is not None:
        if not source.is_file():
            raise DataError(f"{source}: a sha256 was given but the source is a folder, not a zip")
        verify_sha256(source, sha256)
    if not use_cache:
        return decode_omniglot_set(source, set_name, image_size, allow_any_size=allow_any_size)
    key = _source_key(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir("omniglot")
    path = cache / f"omniglot-{set_name}-{image_size}px-{key[:16]}-v{_CACHE_VERSION}.safetensors"
    hit = load_cache(path)
    if hit is not None:
        tensors, meta = hit
        if meta.get("source_key") == key and meta.get("image_size") == image_size:
            return OmniglotData(tensors["images"], meta["alphabets"], meta["characters"], [set_name] * len(meta["alphabets"]))
    data = decode_omniglot_set(source, set_name, image_size, allow_any_size=allow_any_size)
    save_cache(
        path,
        {"images": data.images},
        {"source_key": key, "image_size": image_size, "alphabets": data.alphabets, "characters": data.characters},
    )
    return data


def load_omniglot(
    root: str | os.PathLike,
    image_size: int = 28,
    *,
    sets: tuple[str, ...] = SETS,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    sha256: dict[str, str] | None = None,
) -> OmniglotData:
    """Load the given Omniglot sets found under ``root`` and pool them (background first).

    ``root`` holds ``images_background.zip`` / ``images_evaluation.zip`` or their extracted folders.
    ``sha256`` optionally maps set name to the expected zip checksum.
    """
    parts = []
    for s in sets:
        src = find_source(root, s)
        parts.append(
            load_omniglot_set(
                src, s, image_size, cache_dir=cache_dir, use_cache=use_cache,
                sha256=(sha256 or {}).get(s),
            )
        )
    return OmniglotData.concat(parts)


# ----------------------------------------------------------------------------- splits


def rotate_classes(data: OmniglotData) -> OmniglotData:
    """Make each character 4 classes: rotated by 0, 90, 180 and 270 degrees (counter-clockwise).

    Class ``4*i + r`` is character ``i`` rotated by ``90*r`` degrees.
    """
    if len(data) == 0:
        return data
    rotated = torch.stack([torch.rot90(data.images, k, dims=(-2, -1)) for k in range(4)], dim=1)
    n = len(data)
    return OmniglotData(
        rotated.reshape(n * 4, *data.images.shape[1:]),
        [a for a in data.alphabets for _ in range(4)],
        [c for c in data.characters for _ in range(4)],
        [s for s in data.sets for _ in range(4)],
        [(r + 90 * k) % 360 for r in data.rotations for k in range(4)],
    )


def omniglot_splits(
    data: OmniglotData,
    split: Literal["paper", "lake"] = "paper",
    *,
    seed: int = 1,
    n_train: int = 1200,
    n_val: int = 0,
    rotate_train: bool = True,
    rotate_test: bool = True,
) -> dict[str, OmniglotData]:
    """Split pooled Omniglot characters into ``train`` / ``val`` / ``test`` class sets.

    ``paper`` (Vinyals et al. 2016, Finn et al. 2017): all characters (both sets) shuffled with
    ``random.Random(seed)`` (Finn's code used seed 1, but on an ``os.listdir`` order, so his exact
    split cannot be reproduced), the first ``n_train`` (1200) for meta-training and the rest (423)
    for meta-testing. ``n_val > 0`` moves the *last* ``n_val`` of the training characters to
    ``val`` for early stopping (so train has ``n_train - n_val``); the test set is untouched.

    ``lake``: background set = train, evaluation set = test (``n_val`` carved from the end of
    train as above).

    Rotations (4x classes, see :func:`rotate_classes`) are applied after splitting, so the four
    rotations of a character are always in the same split. Finn's code rotated test characters
    too, hence ``rotate_test=True`` by default; validation follows ``rotate_test``.
    """
    if split == "paper":
        order = list(range(len(data)))
        random.Random(seed).shuffle(order)
        if not 0 < n_train < len(order):
            raise DataError(f"n_train={n_train} must be between 1 and {len(order) - 1} (there are {len(order)} characters)")
        train_idx, test_idx = order[:n_train], order[n_train:]
    elif split == "lake":
        train_idx = [i for i, s in enumerate(data.sets) if s == "background"]
        test_idx = [i for i, s in enumerate(data.sets) if s == "evaluation"]
        if not train_idx or not test_idx:
            raise DataError("the 'lake' split needs both the background and the evaluation set loaded")
    else:
        raise DataError(f"unknown Omniglot split {split!r}; use 'paper' or 'lake'")
    if not 0 <= n_val < len(train_idx):
        raise DataError(f"n_val={n_val} must be between 0 and {len(train_idx) - 1}")
    val_idx = train_idx[len(train_idx) - n_val :] if n_val else []
    train_idx = train_idx[: len(train_idx) - n_val]
    out = {"train": data.subset(train_idx), "val": data.subset(val_idx), "test": data.subset(test_idx)}
    if rotate_train:
        out["train"] = rotate_classes(out["train"])
    if rotate_test:
        out["val"] = rotate_classes(out["val"])
        out["test"] = rotate_classes(out["test"])
    return out


def download_omniglot(root: str | os.PathLike, sets: tuple[str, ...] = SETS, timeout: float = 120.0) -> list[Path]:
    """Download the official Omniglot zips to ``root`` (needs network; md5-verified)."""
    root = Path(root)
    return [
        download(OFFICIAL_URLS[s], root / f"images_{s}.zip", md5=OFFICIAL_MD5[s], timeout=timeout)
        for s in sets
    ]

