"""What `nanolab data prepare SPEC` and `nanolab data info SPEC` print."""

from __future__ import annotations

from nanolab.config import DataConfig
from nanolab.data import cache, nanogpt
from nanolab.data.sources import Source, resolve_source


def prepare_data(cfg: DataConfig) -> str:
    """Prepare the token cache entry `cfg` trains on (on a cluster's login node, say); one line saying what."""
    source = resolve_source(cfg)
    if source.format == "nanogpt_bin":
        nanogpt.open_splits(*source.train, *source.val, source.meta, cfg.vocab_size)  # checks them
        return f"nothing to prepare: nanoGPT's files in {source.name} are read in place"
    entry = cache.find_entry(source, cfg)
    return f"{'prepared' if cache.prepare(entry, source) else 'already prepared'}: {entry.path}"


def data_info(cfg: DataConfig) -> str:
    """The files `cfg` trains on, their sizes, the tokens per split, the vocabulary and the cache entry."""
    source = resolve_source(cfg)
    lines = [f"source:     {source.name} ({source.format})"]
    lines += [f"{split} file: {path} ({path.stat().st_size:,} bytes)"
              for split, paths in (("train", source.train), ("val", source.val)) for path in paths]
    if not source.val:
        lines.append(f"val:        the last {1 - cache.TRAIN_FRACTION:.0%} of the tokens")
    return "\n".join(lines + (nanogpt_lines(source, cfg) if source.format == "nanogpt_bin" else cache_lines(source, cfg)))


def nanogpt_lines(source: Source, cfg: DataConfig) -> list[str]:
    tokenizer = nanogpt.bin_tokenizer(source.train[0].parent, source.meta, cfg.vocab_size)
    train, val = (path.stat().st_size // nanogpt.BIN_DTYPE.itemsize for path in (*source.train, *source.val))
    kind = f"characters ({source.meta.name})" if source.meta else "GPT-2 BPE ids (data.vocab_size; no meta file)"
    return [f"vocabulary: {tokenizer.vocab_size} {kind}",
            f"tokens:     {train:,} train / {val:,} val ({nanogpt.BIN_DTYPE.name})",
            "cache:      none: nanoGPT's files are read in place"]


def cache_lines(source: Source, cfg: DataConfig) -> list[str]:
    entry = cache.find_entry(source, cfg)
    if not entry.prepared:
        return [f"tokenizer:  {cfg.tokenizer}, built when the cache entry is prepared",
                f"cache:      {entry.path} (not prepared yet: `nanolab data prepare` or the first run makes it)"]
    provenance = cache.read_provenance(entry)
    tokens = provenance["tokens"]
    return [f"tokenizer:  {cfg.tokenizer} (vocabulary {provenance['vocab_size']})",
            f"tokens:     {tokens['train']:,} train / {tokens['val']:,} val ({provenance['dtype']})",
            f"cache:      {entry.path}"]
