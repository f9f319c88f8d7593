"""nanolab.data: the Tiny Shakespeare download/cache/verify, the char tokenizer, the split and batches (the token
cache, more sources and nanoGPT's files: test_datacache.py)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import shared_shakespeare

from nanolab import registry
from nanolab.config import DataConfig
from nanolab.data import (
    SHAKESPEARE_SHA256,
    CharTokenizer,
    Data,
    load_data,
    tiny_shakespeare,
    tokenizer_from_dict,
)
from nanolab.errors import NanolabError


@pytest.fixture(scope="module")
def shakespeare():
    """Tiny Shakespeare loaded once from the session's seeded cache."""
    return load_data(DataConfig())


# ----------------------------------------------------------------------------- download against a local server


@pytest.fixture
def serve():
    """serve(body) -> (url, requests): an HTTP server on 127.0.0.1 answering every GET with `body`."""
    servers = []

    def start(body: bytes) -> tuple[str, list[str]]:
        requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/input.txt", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NANOLAB_CACHE", str(cache))
    return cache


def cache_contents(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))


def test_download_caches_the_verified_file_and_reuses_it(serve, empty_cache, monkeypatch):
    url, requests = serve(shared_shakespeare().read_bytes())
    monkeypatch.setenv("NANOLAB_SHAKESPEARE_URL", url)

    path = tiny_shakespeare()

    assert path == empty_cache / "tinyshakespeare/input.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    assert cache_contents(empty_cache) == ["tinyshakespeare", "tinyshakespeare/input.txt"]
    assert load_data(DataConfig()).vocab_size == 65
    assert tiny_shakespeare() == path
    assert len(requests) == 1


def test_corrupt_download_is_an_error_and_leaves_nothing(serve, empty_cache, monkeypatch):
    body = bytearray(shared_shakespeare().read_bytes())
    body[1000] ^= 1
    url, requests = serve(bytes(body))
    monkeypatch.setenv("NANOLAB_SHAKESPEARE_URL", url)

    with pytest.raises(NanolabError) as err:
        tiny_shakespeare()

    message = str(err.value)
    assert url in message and "checksum" in message
    assert str(empty_cache / "tinyshakespeare/input.txt") in message and SHAKESPEARE_SHA256 in message
    assert len(requests) == 1
    assert cache_contents(empty_cache) == []


def test_unreachable_server_says_how_to_place_the_file_by_hand(empty_cache, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    server.server_close()  # nothing listens on that port any more
    monkeypatch.setenv("NANOLAB_SHAKESPEARE_URL", url)

    with pytest.raises(NanolabError) as err:
        load_data(DataConfig())

    message = str(err.value)
    assert url in message and "by hand" in message
    assert str(empty_cache / "tinyshakespeare/input.txt") in message and SHAKESPEARE_SHA256 in message
    assert cache_contents(empty_cache) == []


def test_a_cached_file_with_a_wrong_checksum_is_an_error(empty_cache):
    cached = empty_cache / "tinyshakespeare/input.txt"
    cached.parent.mkdir()
    cached.write_text("not Shakespeare\n")

    with pytest.raises(NanolabError, match="checksum") as err:
        tiny_shakespeare()

    assert str(cached) in str(err.value)
    assert cached.read_text() == "not Shakespeare\n"  # the user's file is left for them to inspect


# ----------------------------------------------------------------------------- corpus, tokenizer, split


def test_registry_holds_the_dataset_and_the_tokenizer():
    assert "shakespeare_char" in registry.available("dataset")
    assert registry.get("tokenizer", "char") is CharTokenizer


def test_shakespeare_split_and_vocabulary(shakespeare):
    assert shakespeare.vocab_size == 65
    assert (len(shakespeare.train), len(shakespeare.val)) == (1_003_854, 111_540)
    assert shakespeare.train.dtype == shakespeare.val.dtype == np.uint8  # the smallest dtype that holds 65 ids
    assert isinstance(shakespeare.train, np.memmap) and isinstance(shakespeare.val, np.memmap)
    text = shared_shakespeare().read_text(encoding="utf-8")
    assert shakespeare.tokenizer.decode(shakespeare.val.tolist()) == text[1_003_854:]
    assert "shakespeare_char" in shakespeare.description
    # one token per character: val/bpc is val/loss / ln 2 exactly
    assert shakespeare.chars == {"train": 1_003_854, "val": 111_540}
    assert shakespeare.chars_per_token("train") == shakespeare.chars_per_token("val") == 1.0


def test_char_tokenizer_round_trips(shakespeare):
    tokenizer = shakespeare.tokenizer
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < 65 for i in ids)
    assert tokenizer.decode(ids) == text

    restored = tokenizer_from_dict(json.loads(json.dumps(tokenizer.to_dict())))
    assert isinstance(restored, CharTokenizer)
    assert restored.vocab_size == 65
    assert restored.encode(text) == ids and restored.decode(ids) == text


def test_encoding_an_unknown_character_names_it(shakespeare):
    with pytest.raises(NanolabError, match="'@'"):
        shakespeare.tokenizer.encode("an @ sign")


def test_data_path_trains_on_a_custom_file_instead_of_the_dataset(tmp_path, empty_cache, monkeypatch):
    monkeypatch.setenv("NANOLAB_SHAKESPEARE_URL", "http://127.0.0.1:9/unused")  # the dataset must not be consulted
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcab\n" * 100, encoding="utf-8")

    data = load_data(DataConfig(path=str(corpus), block_size=8))

    assert data.tokenizer.decode(range(data.vocab_size)) == "\nabc"
    assert (len(data.train), len(data.val)) == (540, 60)
    assert str(corpus) in data.description
    assert not (empty_cache / "tinyshakespeare").exists()
    assert [p.name.split("-")[0] for p in (empty_cache / "tokens").iterdir() if p.is_dir()] == ["char"]


@pytest.mark.parametrize(
    "content, problem",
    [(None, "data.path = '{corpus}': no such file"),
     (b"caf\xe9\n" * 50, "{corpus}: not UTF-8 text (invalid continuation byte at byte 3)"),
     (b"tiny\n", "{corpus}: too short for data.block_size = 8: each split needs more tokens than that, and it has "
                 "4 train / 1 val tokens")],
)
def test_bad_data_path_is_one_line_naming_the_file(tmp_path, content, problem):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)

    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(path=str(corpus), block_size=8))

    assert str(err.value) == problem.format(corpus=corpus)


# ----------------------------------------------------------------------------- batches


def batches(data, generator, n=3, split="train"):
    return [data.get_batch(split, 4, 16, generator, "cpu") for _ in range(n)]


def test_batches_are_shifted_windows_of_the_corpus(shakespeare):
    x, y = shakespeare.get_batch("val", 4, 16, torch.Generator().manual_seed(0), "cpu")

    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    val_text = shakespeare.tokenizer.decode(shakespeare.val.tolist())
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert shakespeare.tokenizer.decode(row_x + row_y[-1:]) in val_text


def test_the_generator_alone_determines_the_batches(shakespeare):
    torch.manual_seed(1)
    first = batches(shakespeare, torch.Generator().manual_seed(1337))
    torch.manual_seed(2)  # the global RNG plays no part
    again = batches(shakespeare, torch.Generator().manual_seed(1337))
    other = batches(shakespeare, torch.Generator().manual_seed(1338))

    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, other))


def test_restoring_the_generator_state_continues_the_same_batches(shakespeare):
    generator = torch.Generator().manual_seed(1337)
    batches(shakespeare, generator, n=2)
    state = generator.get_state()
    continuation = batches(shakespeare, generator)

    resumed = torch.Generator()
    resumed.set_state(state)
    for (x1, y1), (x2, y2) in zip(continuation, batches(shakespeare, resumed)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def rss_file_kb() -> int:
    """This process's resident pages of mapped files (page-cache pages mapped into it), from /proc."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:")))


def test_batches_from_a_token_file_leave_the_rss_flat(tmp_path):
    """A token file the kernel has just written sits in its cache in large folios; a window read through the
    memory map mapped its whole folio into the process (316 MB of RSS in 20 steps on a 500 MB corpus)."""
    path = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 65_000, 32 << 20, dtype=np.uint16).tofile(path)  # 64 MB, in the cache
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    data = Data(tokens, tokens, CharTokenizer(["a"]), "", None)
    generator, before = torch.Generator().manual_seed(0), rss_file_kb()
    for _ in range(50):
        x, y = data.get_batch("train", 12, 64, generator)
    assert rss_file_kb() - before < 4096  # 600 windows of 130 bytes: nothing like the 64 MB file
    starts = torch.randint(len(tokens) - 64, (12,), generator=torch.Generator().manual_seed(0))
    x, y = data.get_batch("train", 12, 64, torch.Generator().manual_seed(0))
    assert x.tolist() == [tokens[s:s + 64].tolist() for s in starts.tolist()]  # the windows themselves
