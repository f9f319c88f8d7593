"""The token cache: each (corpus, tokenizer) pair is tokenized once, into token files that runs memory-map.

    entry = find_entry(source, cfg.data)   # where the pair's tokens live (the files' contents' SHA-256)
    prepare(entry, source)                 # make the entry unless it exists; True if this process made it
    splits, tokenizer, provenance = open_entry(entry)

An entry, `$NANOLAB_CACHE/tokens/<tokenizer>-<key>/`, holds train.bin and val.bin (the token ids, in the smallest
unsigned dtype that holds the vocabulary), tokenizer.json (its `to_dict()`), provenance.json (the source files
with their sizes and SHA-256, the tokenizer config, the vocabulary size, the dtype, tokens and characters per
split, and each token file's xxh3-128) and verified.json (each token file's identity when its hash last matched).
The key hashes
the files' contents, the split rule and the tokenizer config: an edited corpus gets a new entry, a moved one
keeps its entry, and a BPE tokenizer is trained once for every run, sweep trial and ablation cell that shares it.

Preparing takes an exclusive lock on `<entry>.lock`, looks again (another process may have made the entry while
this one waited), writes into a temporary folder and renames it into place: a killed preparation leaves no
entry, and two preparations of one entry at once (sweep workers, DDP ranks) make it once.

Opening an entry checks each token file's size and every id's range, always, and its content hash whenever the
file's identity (inode, size, mtime, ctime) differs from the one verified.json recorded: a damaged entry is one
line naming the file and the fix before the first step, never a traceback or a silent run on wrong tokens.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from nanolab import files, registry
from nanolab.config import DataConfig
from nanolab.data.download import cache_dir, sha256_file
from nanolab.data.integrity import identity, scan
from nanolab.data.sources import Source, text_pieces
from nanolab.data.tokenizer import Tokenizer, tokenizer_from_dict
from nanolab.errors import NanolabError
from nanolab.progress import quiet

CACHE_FORMAT = 2  # part of every key: raise it when the entry's layout or the tokenizing changes
TRAIN_FRACTION = 0.9  # without val files, the first 90% of the tokens train and the last 10% validate
SPLITS = ("train", "val")
PROGRESS_MIN_BYTES = 1 << 24  # smaller corpora prepare in about a second: no progress is shown


@dataclass(frozen=True)
class Entry:
    """Where the tokens of one (corpus, tokenizer) pair live, what the key hashes, and the source files."""

    path: Path
    recipe: dict  # the files' SHA-256, the split rule, the tokenizer config, CACHE_FORMAT
    sources: dict[str, list[dict]]  # split -> [{"path", "bytes", "sha256"}] of its files

    @property
    def prepared(self) -> bool:
        return self.path.is_dir()  # an entry appears whole, by a rename, or not at all

    def token_file(self, split: str) -> Path:
        return self.path / f"{split}.bin"


@dataclass(frozen=True)
class Piece:
    """A piece of text as it was tokenized: the token count after it, and its characters."""

    end: int
    chars: int


def find_entry(source: Source, cfg: DataConfig) -> Entry:
    sources = {"train": [fingerprint(p) for p in source.train], "val": [fingerprint(p) for p in source.val]}
    recipe = {"cache_format": CACHE_FORMAT, "split": None if source.val else TRAIN_FRACTION,
              "tokenizer": cfg.tokenizer, "vocab_size": cfg.vocab_size,
              **{split: [f["sha256"] for f in sources[split]] for split in SPLITS}}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    return Entry(cache_dir() / "tokens" / f"{cfg.tokenizer}-{key}", recipe, sources)


def fingerprint(path: Path) -> dict:
    try:
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": content_hash(path)}
    except OSError as exc:
        raise NanolabError(f"{path}: cannot read it ({exc.strerror})") from None


def content_hash(path: Path) -> str:
    """The file's SHA-256, remembered under `$NANOLAB_CACHE/hashes/` for as long as its inode, size, mtime and
    ctime stay the same (git's test for an unchanged file): hashing a 50 GB corpus takes minutes, and every run,
    trial and cell looks its entry up. ctime changes with any write and cannot be set back, unlike mtime."""
    stat = path.stat()
    state = f"{path.resolve()}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
    memo = cache_dir() / "hashes" / hashlib.sha256(state.encode()).hexdigest()
    if memo.is_file():
        return memo.read_text(encoding="utf-8")
    digest = sha256_file(path)
    try:
        files.write_text(memo, digest)
    except files.WriteFailed:
        pass  # a read-only cache: the hash is computed again next time
    return digest


def prepare(entry: Entry, source: Source) -> bool:
    """Make `entry` unless it exists; True if this process made it, False if it existed or another made it."""
    refuse_empty(entry)
    if entry.prepared:
        return False
    with exclusive_lock(entry.path):
        if entry.prepared:  # another process made it while this one waited for the lock
            return False
        files.remove_partial_dirs(entry.path)  # a killed preparation's: the lock says nobody is writing them
        with files.atomic_dir(entry.path) as folder:
            write_entry(folder, entry, source)
    return True


def remove(entry: Entry) -> None:
    """Delete the entry (`nanolab data prepare --rebuild`), under its lock: never under a process preparing it."""
    with exclusive_lock(entry.path):
        shutil.rmtree(entry.path, ignore_errors=True)


@contextmanager
def exclusive_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<entry>.lock`; the kernel releases it when the process ends, killed or not."""
    lock = entry.with_name(entry.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = lock.open("a")
    except OSError as exc:
        raise files.WriteFailed(lock, exc) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"nanolab: waiting for another process to prepare {entry}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def write_entry(folder: Path, entry: Entry, source: Source) -> None:
    """Tokenize `source` into `folder`: the tokenizer built from all its text, then each split's tokens."""
    size = sum(f["bytes"] for split in SPLITS for f in entry.sources[split])
    with progress(f"preparing the token cache {entry.path}", 2 * size) as advance:  # two passes over the text
        tokenizer = registry.get("tokenizer", entry.recipe["tokenizer"]).from_texts(
            read(source.train + source.val, advance), entry.recipe["vocab_size"])
        dtype = token_dtype(tokenizer.vocab_size)
        if source.val:
            splits = {split: write_tokens(paths, folder / f"{split}.bin", tokenizer, dtype, advance)
                      for split, paths in zip(SPLITS, (source.train, source.val))}
            counts = {split: (pieces[-1].end if pieces else 0, sum(p.chars for p in pieces))
                      for split, pieces in splits.items()}
        else:
            pieces = write_tokens(source.train, folder / "train.bin", tokenizer, dtype, advance)
            counts = split_off_val(folder, pieces, tokenizer, dtype)
    files.write_json(folder / "tokenizer.json", tokenizer.to_dict())
    files.write_json(folder / "provenance.json", {
        "sources": entry.sources, "recipe": entry.recipe, "vocab_size": tokenizer.vocab_size, "dtype": dtype.name,
        "tokens": {split: counts[split][0] for split in SPLITS}, "chars": {split: counts[split][1] for split in SPLITS},
        "xxh3_128": {split: scan(folder / f"{split}.bin", dtype, tokenizer.vocab_size, True) for split in SPLITS},
    })
    # renaming the folder into place keeps its files' inodes and times: the entry starts out verified
    files.write_json(folder / "verified.json", {split: identity(folder / f"{split}.bin") for split in SPLITS})


def refuse_empty(entry: Entry) -> None:
    """An empty corpus, or an empty val_path, has no tokens to train or validate on: say which files."""
    for split in SPLITS:
        sources = entry.sources[split]
        if sources and not any(f["bytes"] for f in sources):
            names = ", ".join(f["path"] for f in sources)
            raise NanolabError(f"{names}: empty: the {split} split has no text"
                               f"{' (data.val_path)' if split == 'val' else ''}")


def read(paths: Iterable[Path], advance: Callable[[int], None]) -> Iterator[str]:
    for path in paths:
        for text, n_bytes in text_pieces(path):
            yield text
            advance(n_bytes)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint8 up to 256 tokens, uint16 up to 65,536."""
    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32) if vocab_size <= np.iinfo(t).max + 1)


def write_tokens(paths: Iterable[Path], out: Path, tokenizer: Tokenizer, dtype: np.dtype,
                 advance: Callable[[int], None]) -> list[Piece]:
    pieces, end = [], 0
    with out.open("wb") as f:
        for text in read(paths, advance):
            ids = np.asarray(tokenizer.encode(text), dtype=dtype)
            ids.tofile(f)
            end += ids.size
            pieces.append(Piece(end, len(text)))
    return pieces


def split_off_val(folder: Path, pieces: list[Piece], tokenizer: Tokenizer, dtype: np.dtype) -> dict:
    """Move the last 10% of train.bin's tokens into val.bin: (tokens, characters) of each split."""
    total = pieces[-1].end if pieces else 0
    n_train = int(TRAIN_FRACTION * total)
    train, val = folder / "train.bin", folder / "val.bin"
    with train.open("rb") as src, val.open("wb") as dst:  # a file copy: no page of it enters this process's RSS
        src.seek(n_train * dtype.itemsize)
        shutil.copyfileobj(src, dst)
    os.truncate(train, n_train * dtype.itemsize)
    val_chars = chars_from(n_train, pieces, val, tokenizer, dtype)
    return {"train": (n_train, sum(p.chars for p in pieces) - val_chars), "val": (total - n_train, val_chars)}


def chars_from(start: int, pieces: list[Piece], tokens: Path, tokenizer: Tokenizer, dtype: np.dtype) -> int:
    """Characters of the text from token `start` on (`tokens` begins there): the rest of its piece decoded, plus
    the pieces after it. Pieces end between characters, so this is the length of all those tokens decoded."""
    i = next((i for i, p in enumerate(pieces) if p.end > start), len(pieces))
    if i == len(pieces):
        return 0
    head = np.fromfile(tokens, dtype=dtype, count=pieces[i].end - start)
    return len(tokenizer.decode(head.tolist())) + sum(p.chars for p in pieces[i + 1:])


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """advance(n): a progress bar on a terminal, one line otherwise; nothing for a small corpus."""
    if total < PROGRESS_MIN_BYTES or quiet():
        yield lambda n: None
    elif not sys.stderr.isatty():
        print(f"nanolab: {description} ({total // 2 / 1e6:,.0f} MB of text)", file=sys.stderr, flush=True)
        yield lambda n: None
    else:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def open_entry(entry: Entry) -> tuple[dict[str, np.ndarray], Tokenizer, dict]:
    """Each split's tokens memory-mapped, the tokenizer, and the provenance of a prepared entry, checked first."""
    provenance = check_entry(entry, "changed")
    try:
        tokenizer = tokenizer_from_dict(files.read_json(entry.path / "tokenizer.json"))
    except (NanolabError, KeyError, TypeError, ValueError) as exc:
        raise damaged(entry, f"{entry.path / 'tokenizer.json'}: not a tokenizer ({exc})") from None
    if tokenizer.vocab_size != provenance["vocab_size"]:
        raise damaged(entry, f"{entry.path / 'tokenizer.json'}: a vocabulary of {tokenizer.vocab_size}, not the "
                      f"{provenance['vocab_size']} of provenance.json")
    dtype = np.dtype(provenance["dtype"])
    splits = {split: memmap(entry.token_file(split), dtype, provenance["tokens"][split]) for split in SPLITS}
    return splits, tokenizer, provenance


def check_entry(entry: Entry, content: str) -> dict:
    """The entry's provenance, after checking each token file's size and ids, and its content hash: "always"
    (`nanolab data verify`), "changed" (when the file's identity differs from verified.json's: a run) or "never"
    (`nanolab data info`, which writes nothing). Newly verified identities are recorded."""
    try:
        provenance = read_provenance(entry)
    except NanolabError as exc:
        raise damaged(entry, str(exc)) from None
    try:
        vocab_size, dtype = provenance["vocab_size"], np.dtype(provenance["dtype"])
        tokens, digests = provenance["tokens"], provenance["xxh3_128"]
        if dtype != token_dtype(vocab_size) or not all(isinstance(tokens[s], int) for s in SPLITS):
            raise ValueError(f"dtype {dtype} for a vocabulary of {vocab_size}")
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise damaged(entry, f"{entry.path / 'provenance.json'}: not an entry's provenance ({exc})") from None
    verified, hashed = read_verified(entry), {}
    for split in SPLITS:
        path, expected = entry.token_file(split), tokens[split] * dtype.itemsize
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise damaged(entry, f"{path}: cannot read it ({exc.strerror})") from None
        if size != expected:
            raise damaged(entry, f"{path}: {size:,} bytes where provenance.json has {tokens[split]:,} {dtype} "
                          f"tokens ({expected:,} bytes)")
        changed = verified.get(split) != identity(path)
        try:
            digest = scan(path, dtype, vocab_size, content == "always" or (content == "changed" and changed))
        except NanolabError as exc:
            raise damaged(entry, str(exc)) from None
        if digest is not None and digest != digests[split]:
            raise damaged(entry, f"{path}: its content differs from the xxh3-128 checksum recorded when it was made")
        if digest is not None:
            hashed[split] = identity(path)
    if hashed:
        try:
            files.write_json(entry.path / "verified.json", verified | hashed)
        except files.WriteFailed:
            pass  # a read-only cache: its files are hashed again next time
    return provenance


def unverified(entry: Entry) -> list[str]:
    """The splits whose token file changed since its content last matched its checksum."""
    verified = read_verified(entry)
    return [split for split in SPLITS if verified.get(split) != identity(entry.token_file(split))]


def damaged(entry: Entry, problem: str) -> NanolabError:
    return NanolabError(f"{problem}: the token cache entry is damaged; rebuild it with `nanolab data prepare SPEC "
                        f"--rebuild` (or delete {entry.path})")


def read_provenance(entry: Entry) -> dict:
    return files.read_json(entry.path / "provenance.json")


def read_verified(entry: Entry) -> dict:
    """split -> the token file's identity when its content last matched its hash; {} if never (or unreadable)."""
    try:
        verified = json.loads((entry.path / "verified.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verified if isinstance(verified, dict) else {}


def memmap(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:  # np.memmap refuses an empty file
        return np.empty(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
