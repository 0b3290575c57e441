"""Atomic file writes: every output goes to a temporary file in the target folder first
and is moved in place with ``os.replace``, so an interrupted job never leaves a half-written
checkpoint, table or image behind (a rerun sees either the old file or the new one).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask_mode() -> int:
    # mkstemp creates 0600 files; give the result the mode a plain open() would
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], object]) -> None:
    """Call ``writer(tmp_path)`` to produce the file, then move it to ``path``.

    For libraries that write by file name (PIL, safetensors, matplotlib): the
    temporary name keeps ``path``'s suffix so format sniffing still works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """Render a matplotlib figure to PNG bytes, close it, and write the file atomically."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())



def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(p: Path, what: str, folder: Path) -> None:
    """``folder`` (``p`` or ``p``'s folder) exists as a writable folder or can be created."""
    base = _nearest_existing(folder.absolute())
    if not base.is_dir():
        raise ValueError(f"{what} {p} cannot be created: {base} is a file, not a folder; give "
                         "another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {p} is not writable ({base} does not allow writing); give a "
                         "path you can write to")


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, creating nothing, that ``path`` is or can become a writable folder.

    Raises ``ValueError`` (naming ``what``, e.g. ``"--out"``) when ``path`` is a file,
    lies under a file, or sits in a folder this process cannot write. Call it before any
    work, so that a run never fails at its end for want of a place to write.
    """
    if not str(path).strip():
        raise ValueError(f"{what} is empty; give a folder path")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {p} is a file, not a folder; give a folder path (or move the "
                         "file away)")
    _check_creatable(p, what, p)
    return p


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, creating nothing, that a file can be written at ``path``: not a folder, its
    folder existing or creatable and writable, the file writable when it exists."""
    if not str(path).strip():
        raise ValueError(f"{what} is empty; give a file path")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {p} is a folder; give a file path such as {p / 'plot.png'}")
    _check_creatable(p, what, p.parent)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{what} {p} exists and is not writable; give another file path")
    return p
