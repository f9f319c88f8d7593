"""How nanolab writes a file: whole files atomically (a temporary file beside it, then a rename), appends a line
at a time, both with the permissions of the user's umask, and every failure as one line naming the file.

A crash mid-write leaves the previous file whole. A full disk is `WriteFailed` ("no space left on device while
writing ckpt/last.pt"), not a chain of tracebacks from deep inside a writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nanolab.errors import NanolabError


class WriteFailed(NanolabError):
    """A file could not be written (no space left, quota, read-only): names the file and the OS's reason. The
    previous version of a whole file is kept; an append is rolled back to its last whole line."""

    def __init__(self, path: str | os.PathLike, error: OSError):
        self.path, self.errno = Path(path), error.errno
        self.what = (error.strerror or str(error)).lower()  # "no space left on device"
        super().__init__(f"{self.what} while writing {self.path}")

    def relative_to(self, folder: str | os.PathLike) -> str:
        """The message with the path relative to `folder` (a run folder): ...while writing ckpt/last.pt."""
        path = self.path.relative_to(folder) if self.path.is_relative_to(folder) else self.path
        return f"{self.what} while writing {path}"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (mode 0666 & ~umask), else goes."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: others could not read a shared results folder
        os.replace(tmp, path)
    except OSError as exc:  # one line naming the file, not a chain of tracebacks from deep in a writer
        raise WriteFailed(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # also frees the space a failed write took, so that meta.json may still be written


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success its files are synced and it is renamed to `path`, else
    it goes. A killed process leaves only a `.<name>.<pid>.<random>.tmp` folder, which `remove_partial_dirs` (or
    `remove_dead_partial_dirs`) clears."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name tells a later call whether the folder's writer is still alive
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(file, 0o666 & ~_umask())  # some writers make 0600 (transformers' model.safetensors)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: others could not read a shared cache
        os.rename(tmp, path)
    except OSError as exc:
        raise WriteFailed(path, exc) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_partial_dirs(path: Path) -> None:
    """Delete the temporary folders that killed `atomic_dir(path)` calls left. Only for a caller that knows no
    other process is writing `path` (it holds a lock)."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def remove_dead_partial_dirs(path: Path) -> None:
    """Delete the temporary folders of `atomic_dir(path)` calls whose process on this machine has died (killed),
    for a caller without a lock; a live writer's folder stays."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        pid = leftover.name.removeprefix(f".{path.name}.").split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def overwrite_in_place(path: Path, text: str) -> None:
    """Write `text` over `path`'s own blocks, then cut the file to its length: the last resort when the disk is
    too full for a temporary copy (a text no longer than the file needs no new blocks on most filesystems).
    Not atomic: only for a status that could not be recorded any other way."""
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteFailed(path, exc) from None


class AppendFile:
    """A text file appended to a whole line at a time, unbuffered: each line is on disk when `write` returns (and
    synced to the device too, with `sync`). A write that fails (disk full) is cut back to the previous whole line
    and raises WriteFailed."""

    def __init__(self, path: Path, sync: bool = False):
        self.path, self.sync = Path(path), sync
        try:
            self._file = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise WriteFailed(self.path, exc) from None

    def write(self, text: str) -> int:
        data, end = text.encode("utf-8"), self._file.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
            if self.sync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), end)  # no torn line for the next line to be glued onto
            raise WriteFailed(self.path, exc) from None
        return len(text)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NanolabError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise NanolabError(f"{path}: holds {type(data).__name__}, not a mapping")
    return data


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process left (`.<name>.<random>.tmp`)."""
    leftovers = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
