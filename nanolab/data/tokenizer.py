"""Tokenizers: registry components of kind `tokenizer`, each a class with the `Tokenizer` interface below.

A tokenizer is built from the corpus once (the token cache keeps it), and its `to_dict()` is saved with every
run, so that sampling and resuming need no corpus.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Iterable, Protocol, Sequence

import tokenizers

from nanolab import registry
from nanolab.errors import NanolabError



class Tokenizer(Protocol):
    """What a registered tokenizer provides. `to_dict()` is JSON-able and carries the registry name as `type`."""

    vocab_size: int

    @classmethod
    def from_texts(cls, texts: Iterable[str], vocab_size: int | None = None) -> Tokenizer: ...  # build (train) it
    # from the corpus, given in pieces that never cut a word, so that a large corpus need not be in memory at once

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
    def from_texts(cls, texts: Iterable[str], vocab_size: int | None = None) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(sorted(chars))  # vocab_size is ignored: the corpus's characters are the vocabulary

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
    def from_texts(cls, texts: Iterable[str], vocab_size: int | None = None) -> BPETokenizer:
        byte_level = tokenizers.pre_tokenizers.ByteLevel
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
        tokenizer.pre_tokenizer = byte_level(add_prefix_space=False)  # no added space: decode(encode(s)) == s
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size or cls.default_vocab_size, initial_alphabet=byte_level.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)  # counts words piece by piece
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


@registry.register("tokenizer", "ids", "token ids as they are, written as numbers: nanoGPT's GPT-2 .bin files "
                   "without a meta file (not for text)")
class TokenIds:
    """The vocabulary of token files that came without their tokenizer (nanoGPT's GPT-2 BPE train.bin): ids below
    `vocab_size`, whose text form is the ids written out ("464 2068 7586"), so that samples and prompts still
    work. tiktoken's GPT-2 encoding turns them into text: `enc.decode([int(i) for i in text.split()])`."""

    type: ClassVar[str] = "ids"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    @classmethod
    def from_texts(cls, texts: Iterable[str], vocab_size: int | None = None) -> TokenIds:
        raise NanolabError("data.tokenizer = 'ids' tokenizes no text: it reads token files "
                           "(data.format nanogpt_bin); for text use char or bpe")

    def encode(self, text: str) -> list[int]:
        words = text.split()
        if not all(w.isdigit() and int(w) < self.vocab_size for w in words):
            raise NanolabError(f"this run's tokens have no text: give them as ids below {self.vocab_size} "
                               f"separated by spaces, not {text!r}")
        return [int(w) for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(map(str, ids))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TokenIds:
        return cls(state["vocab_size"])


def tokenizer_from_dict(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a saved tokenizer (the output of its `to_dict()`) whatever its type."""
    return registry.get("tokenizer", state["type"]).from_dict(state)
