"""Batches: random windows of the memory-mapped token splits, drawn by a seeded generator.

    x, y = data.get_batch("train", 12, 64, generator, "cpu")   # (B, T) int64; y is x shifted by one
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from nanolab.data.tokenizer import Tokenizer
from nanolab.errors import NanolabError


@dataclass(frozen=True, eq=False)
class Data:
    """The token ids of the two splits (memory-mapped: a window read touches only its own pages), the tokenizer
    that made them, a one-line description, and the number of characters of each split's text (so that a loss
    per token converts to bits per character)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    description: str
    chars: dict[str, int] | None  # split -> characters of its text; None: unknown (token files without text)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {name!r}")
        return self.train if name == "train" else self.val

    def chars_per_token(self, name: str) -> float | None:
        """Characters of the split's text per token: 1.0 under the char tokenizer, ~3 under BPE; None: unknown."""
        return self.chars[name] / len(self.split(name)) if self.chars else None

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
        windows = torch.from_numpy(read_windows(tokens, starts.numpy(), block_size + 1))
        device = torch.device(device)
        if device.type == "cuda":  # one async host-to-device copy from pinned memory
            windows = windows.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            windows = windows.to(device)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def read_windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """tokens[s:s + length] for each start s, as a (len(starts), length) int64 array. From a memory-mapped token
    file the windows are read with pread, not through the mapping: the kernel caches a file it just wrote (or read
    ahead) in large folios, and touching one byte maps the whole folio into the process, so a run's RSS would
    grow by megabytes a window (316 MB in 20 steps on a 500 MB corpus) where pread copies only the window."""
    if not isinstance(tokens, np.memmap):
        return tokens[starts[:, None] + np.arange(length)].astype(np.int64)
    size = tokens.dtype.itemsize
    with open(tokens.filename, "rb") as f:
        reads = [os.pread(f.fileno(), length * size, tokens.offset + int(start) * size) for start in starts]
    return np.frombuffer(b"".join(reads), dtype=tokens.dtype).reshape(len(starts), length).astype(np.int64)


def check_lengths(name: str, splits: dict[str, np.ndarray], block_size: int) -> None:
    """A window of block_size + 1 tokens must fit in each split."""
    train, val = splits["train"], splits["val"]
    if min(len(train), len(val)) <= block_size:
        raise NanolabError(
            f"{name}: too short for data.block_size = {block_size}: each split needs more tokens "
            f"than that, and it has {len(train):,} train / {len(val):,} val tokens")
