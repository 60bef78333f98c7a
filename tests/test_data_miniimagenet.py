import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmaml.data.images import load_image_folder, load_images
from fastmaml.data.miniimagenet import load_miniimagenet, read_split_csv
from fastmaml.errors import DataError
from fastmaml.tasks.episodes import EpisodeSampler

WNIDS = ["n01532829", "n01558993", "n01704323"]


def solid(color, size=(84, 84)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8))


def write_csv(path: Path, rows, header=("filename", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def fake_mini(tmp_path: Path, layout: str, per_class: int = 4, size=(84, 84)) -> tuple[Path, Path]:
    """Image pack in ``layout`` 'flat', 'nested' or 'split' (train/<wnid>/ and val/<wnid>/ share each class, as
    some public packs ship it), plus a train.csv; image (c, i) has colour 40c+i."""
    images = tmp_path / "pack" / "images"
    splits = tmp_path / "splits"
    splits.mkdir(parents=True)
    rows = []
    for c, w in enumerate(WNIDS):
        folder = images / w if layout == "nested" else images
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{w}{i + 1:08d}.jpg"
            if layout == "split":
                folder = images / ("train" if i < per_class - 1 else "val") / w
                folder.mkdir(parents=True, exist_ok=True)
            # PNG content under a .jpg name keeps colours exact; Pillow reads by content.
            solid(40 * c + i, size).save(folder / name, format="PNG")
            rows.append((name, w))
    write_csv(splits / "train.csv", rows)
    return tmp_path / "pack", splits


@pytest.mark.parametrize("layout", ["flat", "nested", "split"])
def test_fake_pack_both_layouts(tmp_path, layout):
    images, splits = fake_mini(tmp_path, layout)
    s = load_miniimagenet(images, "train", splits, cache_dir=tmp_path / "cache")
    assert s.images.shape == (3, 4, 3, 84, 84) and s.images.dtype == torch.uint8
    assert s.wnids == WNIDS
    assert [int(s.images[c, i, 0, 0, 0]) for c in range(3) for i in range(4)] == [40 * c + i for c in range(3) for i in range(4)]
    again = load_miniimagenet(images, "train", splits, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, s.images)
    few = load_miniimagenet(images, "train", splits, images_per_class=2, use_cache=False)
    assert few.images.shape == (3, 2, 3, 84, 84)
    # Feeds the episode sampler directly.
    b = EpisodeSampler(s.images, 3, 1, 2).sample(2, torch.Generator().manual_seed(0)).validate()
    assert b.support_x.shape == (2, 3, 3, 84, 84)


def test_resizes_other_sizes(tmp_path):
    images, splits = fake_mini(tmp_path, "flat", per_class=2, size=(100, 60))
    s = load_miniimagenet(images, "train", splits, use_cache=False)
    assert s.images.shape == (3, 2, 3, 84, 84)
    assert int(s.images[2, 1, 1, 40, 40]) == 81
    s32 = load_miniimagenet(images, "train", splits, image_size=32, use_cache=False)
    assert s32.images.shape == (3, 2, 3, 32, 32)


def test_missing_images_named_and_counted(tmp_path):
    images, splits = fake_mini(tmp_path, "nested")
    for i in (1, 2, 3):
        (images / "images" / WNIDS[1] / f"{WNIDS[1]}{i:08d}.jpg").unlink()
    with pytest.raises(DataError, match=rf"3 image\(s\).*{WNIDS[1]}00000001\.jpg"):
        load_miniimagenet(images, "train", splits, use_cache=False)


def test_csv_errors(tmp_path):
    bad = write_csv(tmp_path / "train.csv", [("a.jpg", "n1")], header=("file", "class"))
    with pytest.raises(DataError, match="expected 'filename,label'"):
        read_split_csv(bad)
    with pytest.raises(DataError, match="not found"):
        read_split_csv(tmp_path / "nope.csv")
    short = write_csv(tmp_path / "s.csv", [("a.jpg",)])
    with pytest.raises(DataError, match="line 2"):
        read_split_csv(short)


def test_unequal_counts_need_images_per_class(tmp_path):
    images, splits = fake_mini(tmp_path, "flat")
    rows = list(csv.reader(open(splits / "train.csv")))[1:-1]  # drop one image of the last class
    write_csv(splits / "train.csv", rows)
    with pytest.raises(DataError, match="pass images_per_class"):
        load_miniimagenet(images, "train", splits, use_cache=False)
    assert load_miniimagenet(images, "train", splits, images_per_class=3, use_cache=False).images.shape[1] == 3
    with pytest.raises(DataError, match="fewer than images_per_class=4"):
        load_miniimagenet(images, "train", splits, images_per_class=4, use_cache=False)


def test_real_split_csvs(shared_data):
    splits = {s: read_split_csv(shared_data / "miniimagenet" / "splits" / f"{s}.csv") for s in ("train", "val", "test")}
    assert {s: len(c) for s, c in splits.items()} == {"train": 64, "val": 16, "test": 20}
    for c in splits.values():
        assert {len(v) for v in c.values()} == {600}
        assert all(f.startswith(w) and f.endswith(".jpg") for w, files in c.items() for f in files[:3])
    tr, va, te = (set(splits[s]) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert "n01532829" in tr


# ---------------------------------------------------------------------------- user image folders


def test_image_folder_formats_and_sizes(tmp_path):
    root = tmp_path / "mine"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    solid(10, (50, 30)).save(root / "cats" / "a.png")
    solid(20, (200, 120)).save(root / "cats" / "b.jpg", quality=100)
    solid(30).save(root / "cats" / "c.bmp")
    solid(40).convert("P").save(root / "dogs" / "d.gif")
    solid(50).save(root / "dogs" / "e.webp", lossless=True)
    (root / "dogs" / "notes.txt").write_text("ignored")
    d = load_image_folder(root, size=32, channels=3)
    assert d.x.shape == (5, 3, 32, 32) and d.x.dtype == torch.float32
    assert d.classes == ["cats", "dogs"] and d.y.tolist() == [0, 0, 0, 1, 1] and d.counts() == [3, 2]
    assert abs(float(d.x[0].mean()) - 10 / 255) < 1e-6
    assert abs(float(d.x[1].mean()) - 20 / 255) < 3 / 255  # jpeg is lossy
    g = load_image_folder(root, size=(16, 24), channels=1, dtype=torch.uint8)
    assert g.x.shape == (5, 1, 16, 24) and g.x.dtype == torch.uint8
    assert [t.shape[0] for t in g.per_class()] == [3, 2]
    q, paths = load_images(root / "cats", size=28, channels=1)
    assert q.shape == (3, 1, 28, 28) and [p.name for p in paths] == ["a.png", "b.jpg", "c.bmp"]


def test_image_folder_errors(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(root)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        load_image_folder(root)
    solid(1).save(root / "empty" / "ok.png")
    (root / "empty" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image_folder(root)
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nope")
