"""Tiny Shakespeare: download it once into the cache, verify it by SHA-256, and register it as a dataset.

A dataset (registry kind `dataset`) is a function that returns the path of a verified UTF-8 text file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import suppress
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from nanolab import registry
from nanolab.errors import NanolabError
from nanolab.progress import quiet

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = Path("tinyshakespeare", "input.txt")  # relative to the cache directory
DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a download gives up
PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar for responses at least this large
CHUNK_BYTES = 1 << 16



def cache_dir() -> Path:
    """Where downloaded data lives: `$NANOLAB_CACHE`, default `~/.cache/nanolab`."""
    return Path(os.environ.get("NANOLAB_CACHE") or "~/.cache/nanolab").expanduser()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


_verified: set[tuple[Path, int, int]] = set()  # (path, size, mtime) of cached files whose checksum matched


def verify_cached(path: Path, sha256: str) -> None:
    """Check a cached file against its checksum, once per process for an unchanged file."""
    stat = path.stat()
    key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise NanolabError(
            f"{path}: checksum mismatch (SHA-256 {actual}, expected {sha256}); "
            f"delete the file to download it again, or replace it by hand with the right file"
        )
    _verified.add(key)


def _copy_hashing(source: BinaryIO, out: BinaryIO) -> str:
    """Copy `source` into `out` in chunks; the hex SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def _fetch(url: str, out: BinaryIO) -> str:
    """Write the body at `url` into `out` (a progress bar on a terminal for large bodies); its SHA-256."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        total = int(response.headers.get("Content-Length") or 0)
        if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty() or quiet():
            return _copy_hashing(response, out)
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            return _copy_hashing(progress.wrap_file(response, total, description=f"downloading {url}"), out)


def download(url: str, dest: Path, sha256: str, url_env: str) -> None:
    """Download `url` to `dest` atomically, verified against `sha256`; on failure nothing stays behind.

    Errors say how to place the file by hand, or which variable (`url_env`) points at another copy.
    """
    manual = f"Place the file by hand at {dest} (SHA-256 {sha256})"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise NanolabError(
            f"cannot write to the cache {dest.parent} ({exc.strerror}). {manual}, or set NANOLAB_CACHE"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _fetch(url, out)
        problem = None if actual == sha256 else f"checksum mismatch (got SHA-256 {actual})"
        if problem is None:
            os.replace(tmp, dest)
    except (OSError, HTTPException) as exc:  # URLError and timeouts are OSErrors
        problem = f"{type(exc).__name__}: {exc.reason if isinstance(exc, urllib.error.URLError) else exc}"
    finally:
        if tmp.exists():
            tmp.unlink()
            with suppress(OSError):  # and the dataset's directory if that leaves it empty
                dest.parent.rmdir()
    if problem:
        raise NanolabError(f"could not download {url}: {problem}. {manual}, or set {url_env} to a reachable copy")


def cached_download(relpath: Path, sha256: str, url: str, url_env: str) -> Path:
    """The verified file `relpath` in the cache, first downloaded from `$url_env` (default `url`) if absent."""
    dest = cache_dir() / relpath
    if dest.exists():
        verify_cached(dest, sha256)
    else:
        download(os.environ.get(url_env) or url, dest, sha256, url_env)
    return dest


@registry.register("dataset", "shakespeare_char", "Tiny Shakespeare: 1.1M characters of plays (karpathy/char-rnn)")
def tiny_shakespeare() -> Path:
    """Tiny Shakespeare from the cache, downloaded from `$NANOLAB_SHAKESPEARE_URL` (or char-rnn's) if absent."""
    return cached_download(SHAKESPEARE_FILE, SHAKESPEARE_SHA256, SHAKESPEARE_URL, "NANOLAB_SHAKESPEARE_URL")
