import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmaml.data.archive import extract_archive, sha256_file, verify_sha256
from fastmaml.data.omniglot import (
    OmniglotData,
    load_omniglot,
    load_omniglot_set,
    omniglot_splits,
    rotate_classes,
)
from fastmaml.errors import DataError

BACKGROUND_SHA256 = "236b154d0e6334f364479a5329afea6dab9ff215c148a78d72363ce8c76d5426"


# ---------------------------------------------------------------------------- helpers


def png_bytes(size=(105, 105), seed=0, mode="1") -> bytes:
    rng = np.random.default_rng(seed)
    a = np.ones((size[1], size[0]), dtype=bool)  # white background
    a[30:60, 40 + seed % 20 : 50 + seed % 20] = False  # a black stroke
    a &= rng.random(a.shape) > 0.01
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def make_fake_zip(path: Path, set_name="background", alphabets=("Alpha", "Beta"), chars=2, drawings=20, bad=None) -> Path:
    """A miniature official-layout zip; ``bad`` maps a member name to replacement bytes."""
    top = f"images_{set_name}"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/", b"")
        n = 0
        for a in alphabets:
            for c in range(1, chars + 1):
                for d in range(1, drawings + 1):
                    name = f"{top}/{a}/character{c:02d}/{n // 20 + 1:04d}_{d:02d}.png"
                    zf.writestr(name, (bad or {}).get(name, png_bytes(seed=n)))
                    n += 1
                n = (n // 20 + 1) * 20 if n % 20 else n
    return path


# ---------------------------------------------------------------------------- archive safety


def listing(p: Path) -> set[str]:
    return {str(x.relative_to(p)) for x in p.rglob("*")}


def test_extract_zip_and_tar_roundtrip(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("top/x.txt", b"hello")
        zf.writestr("top/sub/y.txt", b"world")
    out = extract_archive(z, tmp_path / "out")
    assert (out / "top" / "sub" / "y.txt").read_bytes() == b"world"
    t = tmp_path / "a.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(out / "top", arcname="top")
    out2 = extract_archive(t, tmp_path / "out2")
    assert (out2 / "top" / "x.txt").read_bytes() == b"hello"
    with pytest.raises(DataError, match="already exists"):
        extract_archive(t, out2)
    extract_archive(z, out2, overwrite=True)
    assert not any(p.name.startswith(".out2") for p in tmp_path.iterdir())  # no temporary folders left


@pytest.mark.parametrize("member", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt", "..\\evil.txt", "C:/evil.txt"])
def test_zip_slip_rejected_nothing_written(tmp_path, member):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fine.txt", b"x")
        zf.writestr(member, b"pwned")
    root = tmp_path / "box"
    root.mkdir()
    before = listing(tmp_path)
    with pytest.raises(DataError, match="refusing") as e:
        extract_archive(z, root / "dest")
    assert member.replace("\\", "\\\\") in str(e.value) or member in str(e.value)
    assert listing(tmp_path) == before  # not even dest or a temporary folder
    assert not Path("/tmp/evil_abs.txt").exists()


def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo]) -> Path:
    t = tmp_path / "bad.tar"
    with tarfile.open(t, "w") as tf:
        for m in members:
            if m.isfile():
                tf.addfile(m, io.BytesIO(b"p" * m.size))
            else:
                tf.addfile(m)
    return t


def _sym(name, target):
    m = tarfile.TarInfo(name)
    m.type, m.linkname = tarfile.SYMTYPE, target
    return m


def _file(name, size=5):
    m = tarfile.TarInfo(name)
    m.size = size
    return m


@pytest.mark.parametrize(
    "members, bad",
    [
        ([_sym("link", "/etc/passwd")], "link"),
        ([_sym("a/link", "../../outside")], "a/link"),
        ([_sym("link", ".."), _file("link/evil.txt")], "link"),
        ([_file("../evil.txt")], "../evil.txt"),
    ],
)
def test_tar_links_out_rejected(tmp_path, members, bad):
    t = _tar_with(tmp_path, members)
    before = listing(tmp_path)
    with pytest.raises(DataError, match="refusing") as e:
        extract_archive(t, tmp_path / "dest")
    assert repr(bad) in str(e.value)
    assert listing(tmp_path) == before


def test_tar_hardlink_out_rejected(tmp_path):
    m = tarfile.TarInfo("hard")
    m.type, m.linkname = tarfile.LNKTYPE, "../../etc/passwd"
    t = _tar_with(tmp_path, [m])
    with pytest.raises(DataError, match="'hard'"):
        extract_archive(t, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_tar_inside_links_allowed(tmp_path):
    t = _tar_with(tmp_path, [_file("d/real.txt"), _sym("d/alias.txt", "real.txt")])
    out = extract_archive(t, tmp_path / "dest")
    assert (out / "d" / "alias.txt").read_bytes() == b"ppppp"


def test_sha256_helpers(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(f) == digest
    verify_sha256(f, digest.upper())
    with pytest.raises(DataError, match="delete it and re-download"):
        verify_sha256(f, "0" * 64)


# ---------------------------------------------------------------------------- fake Omniglot


def test_fake_zip_and_folder_agree_and_nothing_extracted(tmp_path):
    z = make_fake_zip(tmp_path / "images_background.zip")
    cache = tmp_path / "cache"
    data = load_omniglot(tmp_path, 28, sets=("background",), cache_dir=cache)
    assert data.images.shape == (4, 20, 28, 28) and data.images.dtype == torch.uint8
    assert data.alphabets == ["Alpha", "Alpha", "Beta", "Beta"]
    assert data.characters == ["character01", "character02"] * 2
    assert set(os.listdir(tmp_path)) == {"images_background.zip", "cache"}  # read straight from the zip
    # Ink (the black stroke) is bright after inversion; the background is dark.
    img = data.images[0, 0]
    assert int(img[0, 0]) < 60 and int(img.max()) > 200
    # Same images from an extracted folder (which has the top folder nested, as the zip does).
    folder = tmp_path / "x" / "images_background"
    with zipfile.ZipFile(z) as zf:
        zf.extractall(folder)
    from_folder = load_omniglot(tmp_path / "x", 28, sets=("background",), use_cache=False)
    assert torch.equal(from_folder.images, data.images)
    sized = load_omniglot_set(z, "background", image_size=40, use_cache=False)
    assert sized.images.shape == (4, 20, 40, 40)


def test_corrupt_png_names_member(tmp_path):
    bad = "images_background/Beta/character02/0004_07.png"
    make_fake_zip(tmp_path / "images_background.zip", bad={bad: b"\x89PNG\r\n\x1a\nnot really"})
    with pytest.raises(DataError, match="0004_07.png"):
        load_omniglot(tmp_path, sets=("background",), use_cache=False)


def test_wrong_size_png(tmp_path):
    bad = "images_background/Alpha/character01/0001_03.png"
    z = make_fake_zip(tmp_path / "images_background.zip", bad={bad: png_bytes(size=(64, 64))})
    with pytest.raises(DataError, match=r"0001_03.png.*64x64, expected 105x105"):
        load_omniglot_set(z, "background", use_cache=False)
    ok = load_omniglot_set(z, "background", use_cache=False, allow_any_size=True)
    assert ok.images.shape == (4, 20, 28, 28)


def test_incomplete_character_and_empty_set(tmp_path):
    z = make_fake_zip(tmp_path / "images_background.zip", drawings=19)
    with pytest.raises(DataError, match="has 19 drawings"):
        load_omniglot_set(z, "background", use_cache=False)
    empty = tmp_path / "e" / "images_evaluation.zip"
    empty.parent.mkdir()
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("images_evaluation/", b"")
    with pytest.raises(DataError, match="no Omniglot PNGs"):
        load_omniglot_set(empty, "evaluation", use_cache=False)
    alph = tmp_path / "f" / "images_evaluation" / "Empty_Alphabet"
    alph.mkdir(parents=True)
    with pytest.raises(DataError, match="Empty_Alphabet.*no character folders"):
        load_omniglot(tmp_path / "f", sets=("evaluation",), use_cache=False)


def test_missing_files_message(tmp_path):
    with pytest.raises(DataError, match=r"images_background\.zip.*download_omniglot"):
        load_omniglot(tmp_path, use_cache=False)


def test_bad_zip_and_checksum(tmp_path):
    z = make_fake_zip(tmp_path / "images_background.zip")
    with pytest.raises(DataError, match="checksum mismatch.*delete it and re-download"):
        load_omniglot_set(z, "background", sha256="ab" * 32, use_cache=False)
    load_omniglot_set(z, "background", sha256=sha256_file(z), use_cache=False)
    junk = tmp_path / "j" / "images_background.zip"
    junk.parent.mkdir()
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        load_omniglot_set(junk, "background", use_cache=False)


def test_corrupt_cache_rebuilt(tmp_path):
    z = make_fake_zip(tmp_path / "images_background.zip")
    cache = tmp_path / "cache"
    first = load_omniglot_set(z, "background", cache_dir=cache)
    (f,) = list(cache.glob("*.safetensors"))
    raw = bytearray(f.read_bytes())
    raw[-50] ^= 0xFF  # flip pixels: header still parses, the digest does not match
    f.write_bytes(bytes(raw))
    again = load_omniglot_set(z, "background", cache_dir=cache)
    assert torch.equal(again.images, first.images)
    f.write_bytes(b"garbage")  # unparseable
    assert torch.equal(load_omniglot_set(z, "background", cache_dir=cache).images, first.images)
    assert f.stat().st_size > 1000  # rewritten
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_rotate_and_split_on_fake():
    imgs = torch.arange(10 * 20 * 4 * 4, dtype=torch.int64).view(10, 20, 4, 4).to(torch.uint8)
    data = OmniglotData(imgs, [f"A{i // 5}" for i in range(10)], [f"c{i}" for i in range(10)], ["background"] * 6 + ["evaluation"] * 4)
    rot = rotate_classes(data)
    assert len(rot) == 40 and rot.rotations[:4] == [0, 90, 180, 270]
    assert torch.equal(rot.images[1], torch.rot90(imgs[0], 1, dims=(-2, -1)))
    assert torch.equal(rot.images[4], imgs[1])
    lake = omniglot_splits(data, "lake", rotate_train=False, rotate_test=False)
    assert [len(lake[k]) for k in ("train", "val", "test")] == [6, 0, 4]
    paper = omniglot_splits(data, "paper", n_train=7, n_val=2)
    assert [len(paper[k]) for k in ("train", "val", "test")] == [20, 8, 12]
    with pytest.raises(DataError):
        omniglot_splits(data, "nope")


# ---------------------------------------------------------------------------- real Omniglot

_REAL: dict = {}


@pytest.fixture
def real(shared_data, tmp_path_factory):
    """Decode the real Omniglot once per session (about 5 s) into a temporary cache."""
    if not _REAL:
        cache = tmp_path_factory.mktemp("omniglot_cache")
        t = time.perf_counter()
        data = load_omniglot(shared_data / "omniglot", 28, cache_dir=cache)
        _REAL.update(data=data, cache=cache, decode_s=time.perf_counter() - t)
    return _REAL


def test_real_counts_and_pixels(real):
    data: OmniglotData = real["data"]
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == torch.uint8
    assert data.sets.count("background") == 964 and data.sets.count("evaluation") == 659
    assert len({a for a, s in zip(data.alphabets, data.sets) if s == "background"}) == 30
    assert len({a for a, s in zip(data.alphabets, data.sets) if s == "evaluation"}) == 20
    assert sum(a == "Tifinagh" for a in data.alphabets) == 55
    assert len(set(data.names)) == 1623
    x = data.images.float()
    assert 5 < float(x.mean()) < 60  # mostly black background, bright strokes
    assert int(data.images.max()) == 255 and int(data.images.min()) == 0
    assert float((data.images[:, :, 0, :] == 0).float().mean()) > 0.95  # top row is background
    # Every drawing has ink, and drawings of a character differ (not the same image 20 times).
    assert bool((data.images.flatten(2).amax(2) > 128).all())
    assert not torch.equal(data.images[0, 0], data.images[0, 1])
    assert real["decode_s"] < 60


def test_real_cache_is_fast_and_identical(real, shared_data):
    t = time.perf_counter()
    again = load_omniglot(shared_data / "omniglot", 28, cache_dir=real["cache"])
    load_s = time.perf_counter() - t
    assert torch.equal(again.images, real["data"].images) and again.names == real["data"].names
    assert load_s < real["decode_s"] / 3
    assert len(list(Path(real["cache"]).glob("*.safetensors"))) == 2


def test_real_paper_split(real):
    data = real["data"]
    s = omniglot_splits(data, "paper", rotate_train=False, rotate_test=False)
    assert len(s["train"]) == 1200 and len(s["test"]) == 423 and len(s["val"]) == 0
    assert not set(s["train"].names) & set(s["test"].names)
    assert set(s["train"].sets) == {"background", "evaluation"}  # pooled before shuffling
    assert s["train"].names == omniglot_splits(data, "paper", rotate_train=False)["train"].names  # fixed seed
    assert s["train"].names != omniglot_splits(data, "paper", seed=2, rotate_train=False)["train"].names
    r = omniglot_splits(data, "paper", n_val=100)
    assert (len(r["train"]), len(r["val"]), len(r["test"])) == (4400, 400, 1692)
    assert not {n.split("@")[0] for n in r["val"].names} & {n.split("@")[0] for n in r["train"].names}
    lake = omniglot_splits(data, "lake", rotate_train=False, rotate_test=False)
    assert (len(lake["train"]), len(lake["test"])) == (964, 659)


def test_real_checksum(shared_data):
    verify_sha256(shared_data / "omniglot" / "images_background.zip", BACKGROUND_SHA256)
