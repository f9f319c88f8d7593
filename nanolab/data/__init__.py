"""Data: source -> token cache (memory-mapped) -> batches.

    data = load_data(cfg.data)                    # Data(train, val, tokenizer, description, chars)
    x, y = data.get_batch("train", 12, 64, generator, "cpu")   # (B, T) int64; y is x shifted by one

| module | its one job |
| --- | --- |
| `sources.py` | which files a spec names (a file, folder or glob; `val_path`), and their text in pieces |
| `download.py` | Tiny Shakespeare downloaded once and verified by SHA-256: the `shakespeare_char` dataset |
| `nanogpt.py` | nanoGPT's train.bin, val.bin (and meta.pkl) read in place, the meta unpickled without any class |
| `tokenizer.py` | the `char`, `bpe` and `ids` tokenizers (registry kind `tokenizer`) |
| `cache.py` | the token cache: each (corpus, tokenizer) pair tokenized once, under a lock, atomically; checked on open |
| `integrity.py` | a token file's ids checked against the vocabulary and hashed (xxh3-128) in one chunked pass |
| `batches.py` | `Data`: the memory-mapped splits and their seeded random windows |
| `report.py` | what `nanolab data prepare`, `info` and `verify` print |
"""

from __future__ import annotations

from nanolab.config import DataConfig
from nanolab.data import cache, nanogpt
from nanolab.data.batches import Data, check_lengths
from nanolab.data.cache import TRAIN_FRACTION
from nanolab.data.download import SHAKESPEARE_SHA256, cache_dir, tiny_shakespeare
from nanolab.data.sources import resolve_source
from nanolab.data.tokenizer import BPETokenizer, CharTokenizer, TokenIds, Tokenizer, tokenizer_from_dict

__all__ = ["Data", "load_data", "tokenizer_from_dict", "Tokenizer", "CharTokenizer", "BPETokenizer", "TokenIds",
           "TRAIN_FRACTION", "SHAKESPEARE_SHA256", "cache_dir", "tiny_shakespeare"]


def load_data(cfg: DataConfig) -> Data:
    """The token splits of the source `cfg` names: nanoGPT's files in place, or text through the token cache
    (prepared first if this is the first run that needs it); each split longer than `data.block_size`."""
    source = resolve_source(cfg)
    if source.format == "nanogpt_bin":
        splits, tokenizer = nanogpt.open_splits(*source.train, *source.val, source.meta, cfg.vocab_size)
        # a char token is a character; GPT-2's ids come without their text, so their characters are unknown
        chars = {split: len(tokens) for split, tokens in splits.items()} if source.meta else None
        tokenizer_name = f"char ({source.meta.name})" if source.meta else "GPT-2 BPE ids (no meta file)"
    else:
        entry = cache.find_entry(source, cfg)
        cache.prepare(entry, source)
        splits, tokenizer, provenance = cache.open_entry(entry)
        chars, tokenizer_name = provenance["chars"], cfg.tokenizer
    train, val = splits["train"], splits["val"]
    check_lengths(source.name, splits, cfg.block_size)
    size = f"{sum(chars.values()):,} characters" if chars else f"{len(train) + len(val):,} tokens"
    description = (f"{source.name}: {size}, {tokenizer_name} tokenizer "
                   f"(vocab {tokenizer.vocab_size}), {len(train):,} train / {len(val):,} val tokens")
    return Data(train, val, tokenizer, description, chars)
