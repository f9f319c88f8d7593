"""Data: the Tiny Shakespeare download/cache/verify, tokenizers, the train/val split and batches.

    data = load_data(cfg.data)                    # Data(train, val, tokenizer, description, chars)
    x, y = data.get_batch("train", 12, 64, generator, "cpu")   # (B, T) int64; y is x shifted by one

Datasets and tokenizers are registry components. A dataset (kind `dataset`) is a function that returns the
path of a verified UTF-8 text file; `data.path` in a spec bypasses it. A tokenizer (kind `tokenizer`) is a
class with the `Tokenizer` interface below; its `to_dict()` is saved with a run, so sampling needs no corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol, Sequence

import tokenizers
import torch

from nanolab import registry
from nanolab.config import DataConfig
from nanolab.errors import NanolabError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = Path("tinyshakespeare", "input.txt")  # relative to the cache directory
DOWNLOAD_TIMEOUT = 30.0  # seconds without data before a download gives up
PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar for responses at least this large
CHUNK_BYTES = 1 << 16
TRAIN_FRACTION = 0.9  # the first 90% of the tokens train, the last 10% validate


# ----------------------------------------------------------------------------- cache and download


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
        if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
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


# ----------------------------------------------------------------------------- tokenizers


class Tokenizer(Protocol):
    """What a registered tokenizer provides. `to_dict()` is JSON-able and carries the registry name as `type`."""

    vocab_size: int

    @classmethod
    def from_text(cls, text: str, vocab_size: int | None = None) -> Tokenizer: ...  # build (train) it from the corpus

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Tokenizer: ...


@registry.register("tokenizer", "char", "one token per character; the vocabulary is the corpus's sorted characters")
class CharTokenizer:
    """One token per character of the corpus (nanoGPT's shakespeare_char: 65 tokens for Tiny Shakespeare)."""

    type: ClassVar[str] = "char"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, vocab_size: int | None = None) -> CharTokenizer:
        return cls(sorted(set(text)))  # vocab_size is ignored: the corpus's characters are the vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = "".join(sorted(set(text) - self.stoi.keys()))
            raise NanolabError(f"characters not in the tokenizer's vocabulary: {unknown!r}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CharTokenizer:
        return cls(state["chars"])


@registry.register("tokenizer", "bpe", "byte-level BPE trained on the corpus (GPT-2's scheme); data.vocab_size tokens")
class BPETokenizer:
    """Byte-level byte-pair encoding trained on the corpus with HuggingFace `tokenizers`, no download.

    BPE (Sennrich et al. 2016, arXiv:1508.07909) merges the most frequent adjacent pair until the vocabulary
    holds `vocab_size` tokens; byte-level BPE (Radford et al. 2019, GPT-2) starts from the 256 byte values
    and splits words with GPT-2's pre-tokenizer, so every text round-trips exactly, unseen characters too.
    Training is deterministic (same text and size, same merges), so a resumed run rebuilds the same one.
    A corpus too small for `vocab_size` tokens stops merging early: `vocab_size` is then smaller.
    """

    type: ClassVar[str] = "bpe"
    default_vocab_size: ClassVar[int] = 4096  # ~3.2 characters per token on Tiny Shakespeare

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_text(cls, text: str, vocab_size: int | None = None) -> BPETokenizer:
        byte_level = tokenizers.pre_tokenizers.ByteLevel
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
        tokenizer.pre_tokenizer = byte_level(add_prefix_space=False)  # no added space: decode(encode(s)) == s
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size or cls.default_vocab_size, initial_alphabet=byte_level.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator([text], trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))  # a cut multi-byte character decodes to U+FFFD

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "tokenizer": json.loads(self.tokenizer.to_str())}  # vocabulary and merges

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BPETokenizer:
        return cls(tokenizers.Tokenizer.from_str(json.dumps(state["tokenizer"])))


def tokenizer_from_dict(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a saved tokenizer (the output of its `to_dict()`) whatever its type."""
    return registry.get("tokenizer", state["type"]).from_dict(state)


# ----------------------------------------------------------------------------- corpus, split, batches


def read_corpus(path: Path) -> str:
    """The text of a UTF-8 file, byte for byte (no newline translation); NanolabError naming the path."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise NanolabError(f"data.path {path}: no such file") from None
    except OSError as exc:
        raise NanolabError(f"data.path {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise NanolabError(f"data.path {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass(frozen=True, eq=False)
class Data:
    """Token tensors of the two splits, the tokenizer that made them, a one-line description, and the number of
    characters of each split's text (so that a loss per token converts to bits per character)."""

    train: torch.Tensor
    val: torch.Tensor
    tokenizer: Tokenizer
    description: str
    chars: dict[str, int]  # split -> characters of its text


    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {name!r}")
        return self.train if name == "train" else self.val

    def chars_per_token(self, name: str) -> float:
        """Characters of the split's text per token: 1.0 under the char tokenizer, ~3 under BPE."""
        return self.chars[name] / len(self.split(name))

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (x, y) of shape (batch_size, block_size), int64, y being x shifted by one token.

        The start offsets come from `generator` (a CPU generator) alone, so a seed fixes the batches, and
        restoring `generator.get_state()` continues the same sequence of batches.
        """
        tokens = self.split(split)
        starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
        # every window of T + 1 tokens as a (no-copy) view; one gather copies the B chosen rows
        windows = tokens.unfold(0, block_size + 1, 1)[starts]  # (B, T + 1)
        device = torch.device(device)
        if device.type == "cuda":  # one async host-to-device copy from pinned memory
            windows = windows.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            windows = windows.to(device)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def load_data(data_cfg: DataConfig) -> Data:
    """Read the corpus (`data_cfg.path`, else the registered `data_cfg.dataset`), tokenize it and split it 90/10."""
    if data_cfg.path:
        path, source = Path(data_cfg.path), str(data_cfg.path)
    else:
        path = registry.get("dataset", data_cfg.dataset)()
        source = f"{data_cfg.dataset} ({path})"
    text = read_corpus(path)
    tokenizer = registry.get("tokenizer", data_cfg.tokenizer).from_text(text, data_cfg.vocab_size)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    n_train = int(TRAIN_FRACTION * len(ids))
    train, val = ids[:n_train], ids[n_train:]
    shortest = min(len(train), len(val))
    if shortest <= data_cfg.block_size:
        raise NanolabError(
            f"{source}: too short for data.block_size = {data_cfg.block_size}: each split needs more tokens "
            f"than that, and the {len(ids):,} tokens split into {len(train):,} train / {len(val):,} val"
        )
    val_chars = len(tokenizer.decode(val.tolist()))  # the split is at a token boundary: count its text
    chars = {"train": len(text) - val_chars, "val": val_chars}
    description = (
        f"{source}: {len(text):,} characters, {data_cfg.tokenizer} tokenizer (vocab {tokenizer.vocab_size}), "
        f"{len(train):,} train / {len(val):,} val tokens"
    )
    return Data(train, val, tokenizer, description, chars)
