"""What checking a token cache entry costs (issue #28), per GB of token files, from the page cache.

    python benchmarks/verify.py            # a 500 MB token file in a temporary folder; ~10 s on 2 cores

  ids only        integrity.scan without the hash: what every run and `nanolab data info` pay
  ids + xxh3-128  with the hash: `nanolab data verify`, and a run after a token file's identity changed
  blake2b, sha256 the stdlib's hashes over the same chunks, for the choice of xxh3-128
Each figure is the best of 3 passes; a cold read is bound by the disk instead.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from nanolab.data.integrity import CHUNK_BYTES, scan


def best_of_3(fn) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stdlib_hash(path: Path, name: str) -> None:
    hasher = hashlib.new(name)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--mb", type=int, default=500, help="the token file's size in MB")
    mb = args.parse_args().mb
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.bin"
        np.random.default_rng(0).integers(0, 4096, mb * 500_000, dtype=np.uint16).tofile(path)
        gb = path.stat().st_size / 1e9
        dtype = np.dtype(np.uint16)
        rows = [("ids only", best_of_3(lambda: scan(path, dtype, 4096, hash_content=False))),
                ("ids + xxh3-128", best_of_3(lambda: scan(path, dtype, 4096, hash_content=True))),
                ("blake2b", best_of_3(lambda: stdlib_hash(path, "blake2b"))),
                ("sha256", best_of_3(lambda: stdlib_hash(path, "sha256")))]
    print(f"{'check':<16}{'s per GB':>10}{'GB/s':>8}   ({gb * 1000:.0f} MB of uint16 tokens)")
    for name, seconds in rows:
        print(f"{name:<16}{seconds / gb:>10.3f}{gb / seconds:>8.1f}")


if __name__ == "__main__":
    main()
