"""Download an archive, verify its md5 and unpack it atomically into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

from .errors import DatasetError

__all__ = ["download_and_extract", "fetch_url", "md5_file"]


def fetch_url(url: str, dest: Path) -> None:
    """Copy the resource at ``url`` into the file ``dest`` (overwritten).

    Raises :class:`OSError` (including :class:`urllib.error.URLError`) on network failure.
    :func:`download_and_extract` looks this function up at call time, so it can be replaced
    (for instance by a function copying a local file) to work offline.
    """
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def md5_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex md5 digest of the file at ``path``, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing links and paths leaving ``dest``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
                return
            base = dest.resolve()
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                if not (member.isfile() or member.isdir()) or (target != base and base not in target.parents):
                    raise DatasetError(f"{archive}: refusing to extract unsafe member {member.name!r}")
            tar.extractall(dest)  # members checked above
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive ({exc})") from exc


def download_and_extract(url: str, md5: str, root: str | os.PathLike[str], folder_name: str) -> Path:
    """Download the tar archive at ``url`` and unpack its ``folder_name/`` into ``root``.

    Nothing is fetched when ``root/folder_name`` already exists. Otherwise the archive is
    fetched into a temporary folder inside ``root``, its md5 is checked against ``md5``, it
    is unpacked there, and ``folder_name/`` is renamed into ``root`` in one atomic step. The
    temporary folder is always removed, so a failed download never leaves a partial
    ``root/folder_name``.

    Returns:
        The path ``root/folder_name``.

    Raises:
        DatasetError: the download failed, the md5 does not match, the archive is corrupt,
            or it does not contain ``folder_name/``.
    """
    root = Path(root)
    target = root / folder_name
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder_name}.tmp-", dir=root))
    try:
        archive = tmp / url.rsplit("/", 1)[-1]
        try:
            fetch_url(url, archive)
        except OSError as exc:
            raise DatasetError(f"could not download {url} ({exc})") from exc
        got = md5_file(archive)
        if got != md5:
            raise DatasetError(
                f"{archive.name} downloaded from {url} has md5 {got}, expected {md5}: "
                "the download is corrupt or incomplete; nothing was written to "
                f"{target}, try again"
            )
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        _safe_extract(archive, unpacked)
        source = unpacked / folder_name
        if not source.is_dir():
            raise DatasetError(f"{archive.name} from {url} does not contain {folder_name}/")
        try:
            os.rename(source, target)
        except OSError:
            if not target.is_dir():  # not a concurrent download that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
