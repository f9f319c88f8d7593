"""Sources: which files a `DataConfig` trains on, and their text read in pieces.

    source = resolve_source(cfg.data)   # Source(format, train files, val files, name, meta)
    for text, n_bytes in text_pieces(path): ...

`data.path` (and `data.val_path`) may be a file, a folder (every file in it, recursively, by name; hidden ones
skipped) or a glob pattern; without `data.path`, the registered `data.dataset`. A folder holding nanoGPT's
train.bin and val.bin with a meta.pkl or meta.json is read as nanoGPT's format (see `nanogpt.py`).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nanolab import registry
from nanolab.config import DataConfig
from nanolab.data import nanogpt
from nanolab.errors import NanolabError

PIECE_BYTES = 1 << 22  # text is read, and tokenized, about this much at a time: memory stays flat in the corpus
GLOB_CHARACTERS = frozenset("*?[")
WORD_BYTES = range(0x21, 0x7F)  # printable ASCII other than the space


@dataclass(frozen=True)
class Source:
    """What a run trains on. `val` empty: the last 10% of the train files' tokens validate."""

    format: str  # "text" or "nanogpt_bin"
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    name: str  # for the run's description: the dataset's name or data.path
    meta: Path | None = None  # nanoGPT's meta.pkl / meta.json


def resolve_source(cfg: DataConfig) -> Source:
    """The files that `cfg` names, checked to exist; one line naming the key for a source that does not."""
    if cfg.path is None:
        path = registry.get("dataset", cfg.dataset)()
        return Source("text", (path,), (), f"{cfg.dataset} ({path})")
    if cfg.format == "nanogpt_bin" or (cfg.format == "auto" and nanogpt.is_nanogpt_folder(Path(cfg.path))):
        if cfg.val_path is not None:
            raise NanolabError(f"data.val_path = {cfg.val_path!r}: not with nanoGPT's files, whose val.bin is the "
                               "val split (or null)")
        train, val = nanogpt.bin_files(Path(cfg.path))
        return Source("nanogpt_bin", (train,), (val,), cfg.path, nanogpt.meta_file(Path(cfg.path)))
    val = resolve_files("val_path", cfg.val_path) if cfg.val_path is not None else ()
    return Source("text", resolve_files("path", cfg.path), val, cfg.path)


def resolve_files(key: str, value: str) -> tuple[Path, ...]:
    """The files of a file, folder or glob pattern, in name order."""
    try:
        found, problem = find_files(value)
    except OSError as exc:  # a folder or file the walk meets but may not read (data.path = /: /proc/1/cwd)
        raise NanolabError(f"data.{key} = {value!r}: cannot read {exc.filename} ({exc.strerror})") from None
    if not found:
        raise NanolabError(f"data.{key} = {value!r}: {problem}")
    return found


def find_files(value: str) -> tuple[tuple[Path, ...], str]:
    """The files `value` names, and what to say if there are none."""
    if GLOB_CHARACTERS & set(value):
        found = tuple(sorted(p for p in map(Path, glob.glob(value, recursive=True)) if p.is_file()))
        problem = "no file matches this pattern"
    elif Path(value).is_dir():
        folder = Path(value)
        found = tuple(sorted(p for p in folder.rglob("*")
                             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)))
        problem = "a folder without files; expected UTF-8 text files"
    else:
        found = (Path(value),) if Path(value).is_file() else ()
        problem = "no such file"
    return found, problem


def text_pieces(path: Path) -> Iterator[tuple[str, int]]:
    """The UTF-8 text of `path` byte for byte (no newline translation) as (text, its size in bytes) pieces of
    about PIECE_BYTES, each cut where tokenizing the pieces one by one gives the tokens of the whole text."""
    offset, carried = 0, b""
    try:
        with path.open("rb") as f:
            while block := f.read(PIECE_BYTES):
                buffer = carried + block
                cut = safe_cut(buffer)
                if cut:
                    yield decode(path, buffer[:cut], offset), cut
                    offset += cut
                carried = buffer[cut:]
    except OSError as exc:
        raise NanolabError(f"{path}: cannot read it ({exc.strerror})") from None
    if carried:
        yield decode(path, carried, offset), len(carried)


def safe_cut(buffer: bytes) -> int:
    """The offset after the last newline that stands alone between two printable ASCII characters, 0 if none.

    GPT-2's pre-tokenizer (byte-level BPE's) splits words there whatever follows, whereas a cut inside a run of
    whitespace would change how the run splits; the char tokenizer accepts any cut."""
    newline = buffer.rfind(b"\n", 0, len(buffer) - 1)
    while newline > 0:
        if buffer[newline - 1] in WORD_BYTES and buffer[newline + 1] in WORD_BYTES:
            return newline + 1
        newline = buffer.rfind(b"\n", 0, newline)
    return 0


def decode(path: Path, data: bytes, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NanolabError(f"{path}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})") from None
