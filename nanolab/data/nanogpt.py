"""nanoGPT's prepared data, read as it is: train.bin and val.bin (uint16 tokens written with `.tofile`), beside
meta.pkl (`{'vocab_size': V, 'itos': {id: char}, 'stoi': {char: id}}`, pickled) or a meta.json of that mapping for
its char datasets, or alone for its GPT-2 BPE datasets (openwebtext, shakespeare), whose vocabulary size the spec
states as `data.vocab_size` (50304 in nanoGPT: GPT-2's 50,257 padded to a multiple of 64).

meta.pkl is unpickled without any class or function: the plain dict nanoGPT writes needs none, and naming one
is how a malicious pickle runs code, so a pickle that names one is refused before anything in it runs. Nothing in
a meta file sizes an allocation: the file is read only up to META_MAX_BYTES, and its vocab_size must be at most
65,536 (what uint16 ids can name) and equal the number of its ids before any range of ids is built.

The .bin files are checked before they are used, by a run and by `nanolab data info`: a whole number of uint16
tokens, not empty, not int32 or int64 ids (every second uint16 zero), and every id below the vocabulary size.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from nanolab.data.integrity import scan
from nanolab.data.tokenizer import CharTokenizer, TokenIds, Tokenizer
from nanolab.errors import NanolabError

BIN_FILES = ("train.bin", "val.bin")
META_FILES = ("meta.pkl", "meta.json")
BIN_DTYPE = np.dtype(np.uint16)  # nanoGPT's prepare.py writes np.uint16
MAX_VOCAB = np.iinfo(BIN_DTYPE).max + 1
META_MAX_BYTES = 1 << 24  # nanoGPT's meta for all 65,536 ids is well under 2 MB, pickled or as JSON
WIDE_PROBE = 4096  # tokens read to tell int32 or int64 ids from uint16 ones


def is_nanogpt_folder(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in BIN_FILES)


def bin_files(folder: Path) -> tuple[Path, Path]:
    """train.bin and val.bin of `folder`, and its meta file; one line for what is missing."""
    if not folder.is_dir():
        raise NanolabError(f"data.path = '{folder}': not a folder; data.format = 'nanogpt_bin' reads a folder "
                           f"holding nanoGPT's {' and '.join(BIN_FILES)}")
    for path in (folder / name for name in BIN_FILES):
        if not path.is_file():
            raise NanolabError(f"{path}: no such file (nanoGPT's format needs {' and '.join(BIN_FILES)})")
    return folder / BIN_FILES[0], folder / BIN_FILES[1]


def meta_file(folder: Path) -> Path | None:
    """The char vocabulary's file, or None for GPT-2 BPE files, which have none."""
    return next((folder / name for name in META_FILES if (folder / name).is_file()), None)


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}; a meta.pkl holds only a dict of str and int")


def read_meta(path: Path) -> CharTokenizer:
    """The char vocabulary of a meta.pkl (unpickled without classes) or meta.json, checked to be nanoGPT's."""
    if path.stat().st_size > META_MAX_BYTES:
        raise NanolabError(f"{path}: {path.stat().st_size:,} bytes: a nanoGPT meta file is well under "
                           f"{META_MAX_BYTES:,}")
    try:
        with path.open("rb") as f:
            meta = json.load(f) if path.suffix == ".json" else _NoGlobals(f).load()
    except Exception as exc:  # a malformed pickle (or JSON nested past the recursion limit) fails in many ways
        raise NanolabError(f"{path}: refused ({exc})") from None
    chars = vocabulary(meta)
    if chars is None:
        raise NanolabError(f"{path}: not nanoGPT's meta: expected {{'vocab_size': V, 'itos': {{id: char}}, "
                           "'stoi': {char: id}} with ids 0 to V - 1 and one character each")
    return CharTokenizer(chars)


def vocabulary(meta: object) -> list[str] | None:
    """The characters in id order, if `meta` has the shape nanoGPT writes (JSON's keys are strings of ids)."""
    if not isinstance(meta, dict) or type(meta.get("vocab_size")) is not int:  # bool is an int too
        return None
    itos, stoi, size = meta.get("itos"), meta.get("stoi"), meta["vocab_size"]
    if not isinstance(itos, dict) or not isinstance(stoi, dict) or not 0 < size <= MAX_VOCAB or len(itos) != size:
        return None
    # "²".isdigit() is true but int("²") fails: only ASCII digits are a JSON key's id
    itos = {int(i) if isinstance(i, str) and i.isascii() and i.isdigit() else i: c for i, c in itos.items()}
    if any(type(i) is not int for i in itos) or set(itos) != set(range(size)) or not all(isinstance(c, str) and len(c) == 1 for c in itos.values()):
        return None
    chars = [itos[i] for i in range(size)]
    return chars if stoi == {c: i for i, c in enumerate(chars)} else None


def open_bin(path: Path, vocab_size: int) -> np.ndarray:
    """The tokens of a .bin file, memory-mapped, after checking its size, its dtype and every id's range."""
    size = path.stat().st_size
    if vocab_size > MAX_VOCAB:
        raise NanolabError(f"{path}: a vocabulary of {vocab_size} does not fit nanoGPT's uint16 tokens")
    if size % BIN_DTYPE.itemsize:
        raise NanolabError(f"{path}: {size} bytes is not a whole number of uint16 tokens (nanoGPT's dtype)")
    if size == 0:
        raise NanolabError(f"{path}: empty: the split has no tokens")
    head = np.fromfile(path, dtype=BIN_DTYPE, count=WIDE_PROBE)
    if head.size >= 8 and not head[1::2].any() and head[::2].any():  # small ids, little-endian, 4 or 8 bytes
        raise NanolabError(f"{path}: every second uint16 is 0, as in int32 or int64 ids: nanoGPT's files are uint16 "
                           "(np.array(ids, dtype=np.uint16).tofile(path))")
    scan(path, BIN_DTYPE, vocab_size, hash_content=False)
    return np.memmap(path, dtype=BIN_DTYPE, mode="r")


def bin_tokenizer(folder: Path, meta: Path | None, vocab_size: int | None) -> Tokenizer:
    """The vocabulary of the meta file; without one (GPT-2 BPE files), token ids below `data.vocab_size`."""
    if meta is not None:
        return read_meta(meta)
    if vocab_size is None:
        raise NanolabError(f"{folder}: no {' or '.join(META_FILES)} beside the .bin files: for GPT-2 BPE tokens set "
                           "data.vocab_size (50304 for nanoGPT's openwebtext: GPT-2's 50,257 padded), for char "
                           "tokens add the meta file prepare.py wrote")
    return TokenIds(vocab_size)


def open_splits(train: Path, val: Path, meta: Path | None,
                vocab_size: int | None) -> tuple[dict[str, np.ndarray], Tokenizer]:
    """The two splits memory-mapped from their .bin files, and their vocabulary."""
    tokenizer = bin_tokenizer(train.parent, meta, vocab_size)
    return {"train": open_bin(train, tokenizer.vocab_size), "val": open_bin(val, tokenizer.vocab_size)}, tokenizer
