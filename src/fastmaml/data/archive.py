"""Safe archive extraction, checksums and downloads.

Extraction never writes outside the target folder: every member name and every link
target is checked before anything is written, and each write is re-checked against the
real path on disk (so a link created earlier cannot redirect a later member). The archive
is unpacked into a hidden temporary folder next to the target and renamed into place only
when everything succeeded, so an interrupted or rejected extraction leaves no half folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import urllib.request
from typing import Iterable
import zipfile
from pathlib import Path, PureWindowsPath

import torch

from fastmaml.errors import DataError
from fastmaml.fileio import atomic_save_safetensors, temp_file_beside

_CHUNK = 1 << 20


def hash_listing(h: "hashlib._Hash", entries: Iterable[tuple[str, Path]]) -> None:
    """Feed ``(label, path)`` pairs' sizes and mtimes into ``h``: a cheap cache key that changes with the files."""
    for label, path in entries:
        st = path.stat()
        h.update(f"{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    return _hash_file(path, "sha256")


def _hash_file(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`DataError` unless the file's SHA-256 equals ``expected`` (hex, any case)."""
    actual = sha256_file(path)
    if actual.lower() != expected.strip().lower():
        raise DataError(
            f"{path}: checksum mismatch (sha256 {actual}, expected {expected}). The file is corrupt "
            "or incomplete; delete it and re-download it."
        )


def _member_parts(name: str) -> list[str]:
    """Split an archive member name into safe relative parts, or raise DataError."""
    if "\x00" in name:
        raise DataError(f"archive member {name!r} has a NUL byte in its name; refusing to extract")
    # Treat backslashes as separators too, so a Windows-made "..\\x" cannot slip through.
    unified = name.replace("\\", "/")
    if unified.startswith("/") or PureWindowsPath(name).drive:
        raise DataError(f"archive member {name!r} has an absolute path; refusing to extract (unsafe archive)")
    norm = posixpath.normpath(unified)
    if norm == ".." or norm.startswith("../"):
        raise DataError(
            f"archive member {name!r} would be written outside the target folder ('..' in path); "
            "refusing to extract (unsafe archive)"
        )
    return [p for p in norm.split("/") if p not in ("", ".")]


def _check_inside(root: Path, candidate: str | os.PathLike, member: str, what: str) -> None:
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise DataError(
            f"archive member {member!r}: {what} resolves outside the target folder ({real}); "
            "refusing to extract (unsafe archive)"
        )


def _check_link_target(parts: list[str], target: str, member: str) -> None:
    """A symlink target is relative to the link's own folder; it must stay inside ``root``."""
    t = target.replace("\\", "/")
    if t.startswith("/") or PureWindowsPath(target).drive:
        raise DataError(
            f"archive member {member!r} is a link to an absolute path ({target!r}); refusing to extract (unsafe archive)"
        )
    joined = posixpath.normpath(posixpath.join(*parts[:-1], t) if len(parts) > 1 else t)
    if joined == ".." or joined.startswith("../"):
        raise DataError(
            f"archive member {member!r} is a link pointing outside the target folder ({target!r}); "
            "refusing to extract (unsafe archive)"
        )


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _plan_zip(zf: zipfile.ZipFile, root: Path) -> list[tuple[str, list[str], str, str | None]]:
    """Validate every member first; returns (name, parts, kind, link_target)."""
    plan = []
    for info in zf.infolist():
        parts = _member_parts(info.filename)
        if not parts:
            continue
        if _zip_is_symlink(info):
            target = zf.read(info).decode("utf-8", "surrogateescape")
            _check_link_target(parts, target, info.filename)
            plan.append((info.filename, parts, "symlink", target))
        elif info.is_dir():
            plan.append((info.filename, parts, "dir", None))
        else:
            plan.append((info.filename, parts, "file", None))
    return plan


def _plan_tar(tf: tarfile.TarFile, root: Path) -> list[tuple[tarfile.TarInfo, list[str]]]:
    plan = []
    for m in tf.getmembers():
        parts = _member_parts(m.name)
        if not parts:
            continue
        if m.issym():
            _check_link_target(parts, m.linkname, m.name)
        elif m.islnk():
            # Hard link targets are archive paths relative to the archive root.
            try:
                link_parts = _member_parts(m.linkname)
            except DataError:
                raise DataError(
                    f"archive member {m.name!r} is a hard link to {m.linkname!r}, outside the target folder; "
                    "refusing to extract (unsafe archive)"
                ) from None
            if not link_parts:
                raise DataError(f"archive member {m.name!r} is a hard link to the archive root; refusing to extract")
        elif not (m.isfile() or m.isdir()):
            raise DataError(
                f"archive member {m.name!r} is a device, FIFO or other special file; refusing to extract"
            )
        plan.append((m, parts))
    return plan


def _extract_zip(archive: Path, tmp: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        plan = _plan_zip(zf, tmp)
        for name, parts, kind, target in plan:
            dest = tmp.joinpath(*parts)
            _check_inside(tmp, dest.parent, name, "its folder")
            if kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _check_inside(tmp, dest, name, "its path")
            if kind == "symlink":
                _check_inside(tmp, dest.parent / target, name, "its link target")
                os.symlink(target, dest)
                continue
            with zf.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)


def _extract_tar(archive: Path, tmp: Path) -> None:
    with tarfile.open(archive) as tf:
        plan = _plan_tar(tf, tmp)
        for m, parts in plan:
            dest = tmp.joinpath(*parts)
            _check_inside(tmp, dest.parent, m.name, "its folder")
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _check_inside(tmp, dest, m.name, "its path")
            if m.issym():
                _check_inside(tmp, dest.parent / m.linkname, m.name, "its link target")
                os.symlink(m.linkname, dest)
            elif m.islnk():
                src = tmp.joinpath(*_member_parts(m.linkname))
                _check_inside(tmp, src, m.name, "its hard-link target")
                if not src.is_file():
                    raise DataError(f"archive member {m.name!r} is a hard link to a missing file {m.linkname!r}")
                os.link(src, dest)
            else:
                f = tf.extractfile(m)
                assert f is not None
                with f, open(dest, "wb") as out:
                    shutil.copyfileobj(f, out, _CHUNK)
                # Keep the executable bit but never set-uid or group/world-writable bits.
                os.chmod(dest, 0o755 if m.mode & 0o111 else 0o644)


def _final_link_sweep(tmp: Path) -> None:
    # Links created early may be redirected by links created later; check their final targets.
    for dirpath, dirnames, filenames in os.walk(tmp):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                _check_inside(tmp, p, str(p.relative_to(tmp)), "its final link target")


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Safely extract a zip or tar (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) archive.

    The contents land in ``dest`` (created atomically by renaming a temporary folder).
    Raises :class:`DataError` for unsafe members (absolute paths, ``..``, links pointing
    outside, special files), unreadable archives, or when ``dest`` exists and not ``overwrite``.
    Returns ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    if dest.exists() and not overwrite:
        raise DataError(f"{dest} already exists; delete it or pass overwrite=True to replace it")
    if zipfile.is_zipfile(archive):
        extractor = _extract_zip
    elif tarfile.is_tarfile(archive):
        extractor = _extract_tar
    else:
        raise DataError(f"{archive}: not a zip or tar archive (or it is corrupt); delete it and re-download it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            extractor(archive, tmp)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, FileNotFoundError) and not archive.exists():
                raise DataError(f"{archive}: archive disappeared during extraction") from e
            raise DataError(f"{archive}: cannot extract ({e}); the archive is corrupt, delete it and re-download it") from e
        _final_link_sweep(tmp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` (atomically, via a temporary file) and verify its checksum.

    Needs network access. If ``dest`` already exists with the right checksum it is kept.
    Raises :class:`DataError` on network failure or checksum mismatch (the partial file is removed).
    """
    dest = Path(dest)

    def matches(path: Path) -> bool:
        if sha256 is not None and sha256_file(path) != sha256.lower():
            return False
        if md5 is not None and _hash_file(path, "md5") != md5.lower():
            return False
        return True

    if dest.is_file() and (sha256 or md5) and matches(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = temp_file_beside(dest, "download-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out, _CHUNK)
            except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
                raise DataError(
                    f"could not download {url} ({e}); check your network connection, or download it by hand to {dest}"
                ) from e
        if not matches(tmp):
            raise DataError(
                f"downloaded {url} but its checksum does not match (expected sha256={sha256} md5={md5}); "
                "the server returned something else; delete it and re-download, or fetch it by hand"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


# ----------------------------------------------------------------------------- decoded-data caches


def default_cache_dir(name: str) -> Path:
    """``$FASTMAML_CACHE_DIR/<name>``, else ``~/.cache/fastmaml/<name>``."""
    root = os.environ.get("FASTMAML_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "fastmaml"
    return base / name


def save_cache(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a safetensors cache atomically, with a digest of the tensors for corruption checks."""
    meta = dict(meta)
    meta["digest"] = _tensor_digest(tensors)
    atomic_save_safetensors(path, {k: v.contiguous() for k, v in tensors.items()}, {"meta": json.dumps(meta)})


def load_cache(path: Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Read a cache written by :func:`save_cache`; ``None`` when absent, corrupt or stale."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # any parse failure means a damaged file; the caller rebuilds it
        return None
    if verify and meta.get("digest") != _tensor_digest(tensors):
        return None
    return tensors, meta


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashes the buffer without a copy
    return h.hexdigest()
