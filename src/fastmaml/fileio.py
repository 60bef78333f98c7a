"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 minus the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_file_beside(path: Path, tag: str = "") -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file in ``path``'s folder, to be renamed onto ``path``.

    ``mkstemp`` creates it readable by its owner only (0600); it gets the mode an ordinary
    ``open(path, "w")`` would give, so a result file written through it can be read by others
    and committed as is. (Writers that recreate the file, as safetensors' ``save_file`` does,
    must ``os.chmod(name, default_file_mode())`` again.)
    """
    fd, name = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.{tag}", suffix=".tmp")
    os.fchmod(fd, default_file_mode())
    return fd, name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
