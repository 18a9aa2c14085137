"""Writing result files safely: :func:`atomic_write`.

Training checkpoints, metric files, plots and comparison reports are rewritten while a run
goes on; a reader (or a run killed half-way through a write) must never see a truncated
file. Each write therefore goes to a temporary file in the destination's folder, which is
then renamed over the destination.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "current_umask"]


def current_umask() -> int:
    """The process's file-mode creation mask (e.g. ``0o022``).

    POSIX offers no way to read the mask without setting it, so it is set and restored at
    once (not thread-safe against a concurrent ``os.umask`` call, which nothing here makes).
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory; without this a power loss may forget it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file so that readers see the old content or the new, never a partial file.

    ``write(f)`` fills a temporary file in the destination's folder (same file system, so
    the final rename is atomic); the file is flushed and ``fsync``-ed, then moved over
    ``path`` with :func:`os.replace`, and the folder is ``fsync``-ed. On any error the
    temporary file is removed and ``path`` is untouched. Missing parent folders are
    created.

    The file gets the permissions an ordinary ``open(path, "wb")`` would give it,
    ``0o666`` less the process's umask (the temporary file is created private, ``0o600``,
    and widened before the rename).

    Args:
        path: the destination file.
        write: called once with the temporary file, opened for binary writing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the folder cannot be created or written; anything ``write`` raises is
            passed on unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path
