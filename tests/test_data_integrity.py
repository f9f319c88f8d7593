"""Bad input data (issue #28): nanoGPT meta files that would allocate without bound, damaged token cache entries
(truncated, ids out of the vocabulary, valid-looking corruption), empty corpora, and nanoGPT .bin files of the
wrong dtype or size. Each is one `nanolab: error:` line and exit status 2, before any training step."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import nanogpt_prepare

from nanolab.cli import main
from nanolab.config import DataConfig
from nanolab.data import cache, load_data
from nanolab.data.sources import resolve_source
from nanolab.errors import NanolabError

FIX = "the token cache entry is damaged; rebuild it with `nanolab data prepare SPEC --rebuild` (or delete {e})"


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NANOLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def spec(tmp_path, cache_root) -> Path:
    """A spec on 20,000 characters of text (char tokens: uint8, a vocabulary of ~60), its entry prepared."""
    (tmp_path / "corpus.txt").write_text("".join(chr(97 + i % 26) + "\n" * (i % 7 == 0) for i in range(20_000)))
    path = tmp_path / "spec.yaml"
    path.write_text("data: {path: corpus.txt, block_size: 8}\n")
    assert main(["data", "prepare", str(path)]) == 0
    return path


def entry_of(spec: Path) -> cache.Entry:
    cfg = DataConfig(path=str(spec.parent / "corpus.txt"), block_size=8)
    return cache.find_entry(resolve_source(cfg), cfg)


def error_of(argv: list[str], capsys) -> str:
    """The one line a refused command prints (exit status 2, nothing else on stderr)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nanolab: error: "), err
    return err[len("nanolab: error: "):-1]


def run_refuses(spec: Path) -> str:
    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(path=str(spec.parent / "corpus.txt"), block_size=8))
    return str(err.value)


# ----------------------------------------------------------------------------- the token cache


def test_a_truncated_token_file_is_one_line_for_a_run_and_for_info(spec, capsys):
    entry = entry_of(spec)
    os.truncate(entry.token_file("train"), 1000)
    message = (f"{entry.token_file('train')}: 1,000 bytes where provenance.json has 20,572 uint8 tokens (20,572 "
               f"bytes): {FIX.format(e=entry.path)}")
    assert run_refuses(spec) == message
    assert error_of(["data", "info", str(spec)], capsys) == message


def test_ids_out_of_the_vocabulary_are_caught_even_when_the_file_looks_verified(spec, capsys):
    entry = entry_of(spec)
    with entry.token_file("val").open("r+b") as f:
        f.seek(5)
        f.write(bytes([200]))
    verified = json.loads((entry.path / "verified.json").read_text())  # as if it had been verified since
    verified["val"] = list(cache.identity(entry.token_file("val")))
    (entry.path / "verified.json").write_text(json.dumps(verified))

    vocab = json.loads((entry.path / "provenance.json").read_text())["vocab_size"]
    message = (f"{entry.token_file('val')}: token id 200 at position 5 is >= the vocabulary size {vocab}: "
               f"{FIX.format(e=entry.path)}")
    assert run_refuses(spec) == message
    assert error_of(["data", "info", str(spec)], capsys) == message


def overwrite_keeping_mtime(path: Path, offset: int, data: bytes) -> None:
    stat = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ctime still tells


def test_valid_looking_corruption_is_caught_by_the_checksum(spec, capsys):
    entry = entry_of(spec)
    overwrite_keeping_mtime(entry.token_file("train"), 1000, bytes([1]) * 5000)  # id 1 is in the vocabulary
    message = (f"{entry.token_file('train')}: its content differs from the xxh3-128 checksum recorded when it was "
               f"made: {FIX.format(e=entry.path)}")
    assert run_refuses(spec) == message
    assert error_of(["data", "verify", str(spec)], capsys) == message
    assert error_of(["data", "prepare", str(spec)], capsys) == message  # not "already prepared"

    assert main(["data", "prepare", str(spec), "--rebuild"]) == 0
    assert capsys.readouterr().out == f"prepared: {entry.path}\n"
    assert main(["data", "verify", str(spec)]) == 0
    assert capsys.readouterr().out.startswith(f"verified: {entry.path} (0.0 MB of tokens: sizes, token ids and "
                                              "xxh3-128 checksums, ")


def test_content_is_hashed_only_when_a_files_identity_changed(spec, monkeypatch, capsys):
    entry, hashed = entry_of(spec), []
    scan = cache.scan

    def spy(path, dtype, vocab_size, hash_content):
        hashed.append((path.name, hash_content))
        return scan(path, dtype, vocab_size, hash_content)

    monkeypatch.setattr(cache, "scan", spy)
    load_data(DataConfig(path=str(spec.parent / "corpus.txt"), block_size=8))
    assert hashed == [("train.bin", False), ("val.bin", False)]  # prepare verified them: ids checked, no hash

    os.utime(entry.token_file("val"))  # touched: same content, new identity
    assert main(["data", "info", str(spec)]) == 0
    assert ("content:    val.bin changed since its checksum last matched: the next run or `nanolab data verify` "
            "hashes it") in capsys.readouterr().out
    hashed.clear()
    load_data(DataConfig(path=str(spec.parent / "corpus.txt"), block_size=8))
    load_data(DataConfig(path=str(spec.parent / "corpus.txt"), block_size=8))
    assert hashed == [("train.bin", False), ("val.bin", True), ("train.bin", False), ("val.bin", False)]


def test_verify_needs_a_prepared_entry_and_rebuild_only_prepares(tmp_path, cache_root, capsys):
    (tmp_path / "corpus.txt").write_text("abc\n" * 100)
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: corpus.txt, block_size: 8}\n")
    entry = entry_of(spec)
    assert error_of(["data", "verify", str(spec)], capsys) == (
        f"{entry.path}: not prepared yet, nothing to verify (`nanolab data prepare SPEC` makes it)")
    assert error_of(["data", "info", str(spec), "--rebuild"], capsys) == (
        "--rebuild: only with `nanolab data prepare`, not `info`")


@pytest.mark.parametrize("files, message", [
    ({"corpus.txt": ""}, "{d}/corpus.txt: empty: the train split has no text"),
    ({"corpus.txt": "abcd\n" * 100, "val.txt": ""}, "{d}/val.txt: empty: the val split has no text (data.val_path)"),
])
def test_prepare_refuses_an_empty_corpus_or_val_file(tmp_path, cache_root, capsys, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data: {{path: corpus.txt, val_path: {'val.txt' if 'val.txt' in files else 'null'}}}\n")
    assert error_of(["data", "prepare", str(spec)], capsys) == message.format(d=tmp_path)
    assert not list((cache_root / "tokens").glob("char-*"))


# ----------------------------------------------------------------------------- nanoGPT's files


def write_meta(folder: Path, meta: object, kind: str) -> None:
    (folder / "meta.pkl").unlink()
    if kind == "json":
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        (folder / "meta.pkl").write_bytes(pickle.dumps(meta))


NOT_META = ("{d}/meta.{k}: not nanoGPT's meta: expected {{'vocab_size': V, 'itos': {{id: char}}, 'stoi': "
            "{{char: id}}}} with ids 0 to V - 1 and one character each")


@pytest.mark.parametrize("kind", ["json", "pkl"])
@pytest.mark.parametrize("meta", [
    {"vocab_size": 10_000_000_000, "itos": {}, "stoi": {}},  # once set(range(10**10))
    {"vocab_size": 1, "itos": {"²": "a"}, "stoi": {"a": 0}},  # "²".isdigit(), but int("²") raises
    {"vocab_size": True, "itos": {"0": "a"}, "stoi": {"a": 0}},  # a bool is an int
    {"vocab_size": 65_537, "itos": {}, "stoi": {}},
])
def test_a_meta_file_sizes_no_allocation(tmp_path, capsys, meta, kind):
    folder = tmp_path / "data"
    nanogpt_prepare(folder, "abcd\n" * 40)
    write_meta(folder, meta, kind)
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: data, block_size: 8}\n")
    assert error_of(["data", "info", str(spec)], capsys) == NOT_META.format(d=folder, k=kind)


def test_a_meta_file_too_large_to_be_nanogpts_is_not_read(tmp_path, capsys):
    folder = tmp_path / "data"
    nanogpt_prepare(folder, "abcd\n" * 40)
    with (folder / "meta.pkl").open("ab") as f:
        f.truncate(1 << 25)
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: data, block_size: 8}\n")
    assert error_of(["data", "info", str(spec)], capsys) == (
        f"{folder}/meta.pkl: 33,554,432 bytes: a nanoGPT meta file is well under 16,777,216")


@pytest.mark.parametrize("damage, message", [
    (lambda d: np.arange(200, dtype=np.int32).__mod__(5).tofile(d / "train.bin"),
     "{d}/train.bin: every second uint16 is 0, as in int32 or int64 ids: nanoGPT's files are uint16 "
     "(np.array(ids, dtype=np.uint16).tofile(path))"),
    (lambda d: np.arange(200, dtype=np.int64).__mod__(5).tofile(d / "val.bin"),
     "{d}/val.bin: every second uint16 is 0, as in int32 or int64 ids: nanoGPT's files are uint16 "
     "(np.array(ids, dtype=np.uint16).tofile(path))"),
    (lambda d: np.arange(200, dtype=np.uint8).__mod__(5).tofile(d / "train.bin"),
     "{d}/train.bin: token id 256 at position 0 is >= the vocabulary size 5"),
    (lambda d: (d / "val.bin").write_bytes(b"\x01\x00\x02"),
     "{d}/val.bin: 3 bytes is not a whole number of uint16 tokens (nanoGPT's dtype)"),
    (lambda d: (d / "val.bin").write_bytes(b""), "{d}/val.bin: empty: the split has no tokens"),
    (lambda d: np.array([1, 2, 3, 4, 0, 70], np.uint16).tofile(d / "train.bin"),
     "{d}/train.bin: token id 70 at position 5 is >= the vocabulary size 5"),
])
def test_data_info_checks_nanogpt_files_as_a_run_does(tmp_path, capsys, damage, message):
    folder = tmp_path / "data"
    nanogpt_prepare(folder, "abcd\n" * 40)
    damage(folder)
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: data, block_size: 8}\n")
    assert error_of(["data", "info", str(spec)], capsys) == message.format(d=folder)
    assert error_of(["data", "verify", str(spec)], capsys) == message.format(d=folder)
    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(path=str(folder), block_size=8))
    assert str(err.value) == message.format(d=folder)



def test_a_source_folder_with_an_unreadable_file_is_one_line(tmp_path, cache_root, capsys, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "secret").write_text("abc")
    is_file = Path.is_file

    def denied(path: Path) -> bool:  # as stat() of /proc/1/cwd is, for root too: data.path = / once a traceback
        if path.name == "secret":
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", denied)
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: corpus}\n")
    assert error_of(["data", "info", str(spec)], capsys) == (
        f"data.path = '{tmp_path}/corpus': cannot read {tmp_path}/corpus/secret (Permission denied)")
