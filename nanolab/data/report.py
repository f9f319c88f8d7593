"""What `nanolab data prepare SPEC`, `nanolab data info SPEC` and `nanolab data verify SPEC` print."""

from __future__ import annotations

import time

from nanolab.config import DataConfig
from nanolab.data import cache, nanogpt
from nanolab.data.batches import check_lengths
from nanolab.data.sources import Source, resolve_source
from nanolab.errors import NanolabError


def prepare_data(cfg: DataConfig, rebuild: bool = False) -> str:
    """Prepare the token cache entry `cfg` trains on (on a cluster's login node, say); one line saying what.
    `rebuild`: delete the entry first and make it again (the fix a damaged entry's message names)."""
    source = resolve_source(cfg)
    if source.format == "nanogpt_bin":
        splits, _ = nanogpt.open_splits(*source.train, *source.val, source.meta, cfg.vocab_size)  # checks them
        check_lengths(source.name, splits, cfg.block_size)
        return f"nothing to prepare: nanoGPT's files in {source.name} are read in place"
    entry = cache.find_entry(source, cfg)
    if rebuild:
        cache.remove(entry)
    made = cache.prepare(entry, source)
    splits, _, _ = cache.open_entry(entry)  # what a run checks: a damaged entry is not "already prepared"
    check_lengths(source.name, splits, cfg.block_size)
    return f"{'prepared' if made else 'already prepared'}: {entry.path}"


def verify_data(cfg: DataConfig) -> str:
    """Check every token file `cfg` trains on, hashing the cache entry's files whatever their identity."""
    source = resolve_source(cfg)
    if source.format == "nanogpt_bin":
        nanogpt.open_splits(*source.train, *source.val, source.meta, cfg.vocab_size)
        return (f"checked: {source.name}: sizes, dtype and token ids (nanoGPT's files carry no checksum to "
                "verify their content against)")
    entry = cache.find_entry(source, cfg)
    if not entry.prepared:
        raise NanolabError(f"{entry.path}: not prepared yet, nothing to verify (`nanolab data prepare SPEC` makes it)")
    start = time.perf_counter()
    cache.check_entry(entry, "always")
    size = sum(entry.token_file(split).stat().st_size for split in cache.SPLITS)
    return (f"verified: {entry.path} ({size / 1e6:,.1f} MB of tokens: sizes, token ids and xxh3-128 checksums, "
            f"{time.perf_counter() - start:.2f} s)")


def data_info(cfg: DataConfig) -> str:
    """The files `cfg` trains on, their sizes, the tokens per split, the vocabulary and the cache entry; the
    token files are checked as a run checks them, but the cache entry's content is not hashed (nothing is written)."""
    source = resolve_source(cfg)
    lines = [f"source:     {source.name} ({source.format})"]
    lines += [f"{split} file: {path} ({path.stat().st_size:,} bytes)"
              for split, paths in (("train", source.train), ("val", source.val)) for path in paths]
    if not source.val:
        lines.append(f"val:        the last {1 - cache.TRAIN_FRACTION:.0%} of the tokens")
    return "\n".join(lines + (nanogpt_lines(source, cfg) if source.format == "nanogpt_bin" else cache_lines(source, cfg)))


def nanogpt_lines(source: Source, cfg: DataConfig) -> list[str]:
    splits, tokenizer = nanogpt.open_splits(*source.train, *source.val, source.meta, cfg.vocab_size)
    kind = f"characters ({source.meta.name})" if source.meta else "GPT-2 BPE ids (data.vocab_size; no meta file)"
    return [f"vocabulary: {tokenizer.vocab_size} {kind}",
            f"tokens:     {len(splits['train']):,} train / {len(splits['val']):,} val ({nanogpt.BIN_DTYPE.name}, "
            "ids checked)",
            "cache:      none: nanoGPT's files are read in place"]


def cache_lines(source: Source, cfg: DataConfig) -> list[str]:
    entry = cache.find_entry(source, cfg)
    if not entry.prepared:
        return [f"tokenizer:  {cfg.tokenizer}, built when the cache entry is prepared",
                f"cache:      {entry.path} (not prepared yet: `nanolab data prepare` or the first run makes it)"]
    provenance = cache.check_entry(entry, "never")
    tokens = provenance["tokens"]
    changed = cache.unverified(entry)
    content = (f"{' and '.join(f'{s}.bin' for s in changed)} changed since its checksum last matched: the next run "
               "or `nanolab data verify` hashes it" if changed else "unchanged since its checksum last matched")
    return [f"tokenizer:  {cfg.tokenizer} (vocabulary {provenance['vocab_size']})",
            f"tokens:     {tokens['train']:,} train / {tokens['val']:,} val ({provenance['dtype']}, ids checked)",
            f"content:    {content}",
            f"cache:      {entry.path}"]
