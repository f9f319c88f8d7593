"""The token cache (an entry's files, tokenizing once, killed and concurrent preparations), the sources a spec may
name (folders, globs, val_path), nanoGPT's prepared files (and a malicious meta.pkl), and `nanolab data`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xxhash
from helpers import gpt2_prepare, nanogpt_prepare, shared_shakespeare, wait_for

from nanolab import load_spec, run
from nanolab.cli import main
from nanolab.config import DataConfig
from nanolab.data import BPETokenizer, CharTokenizer, load_data, sources
from nanolab.data.cache import find_entry, token_dtype
from nanolab.data.sources import resolve_source
from nanolab.errors import NanolabError, SpecError

ENTRY_FILES = ["provenance.json", "tokenizer.json", "train.bin", "val.bin", "verified.json"]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return shared_shakespeare().read_text(encoding="utf-8")


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """An empty NANOLAB_CACHE; its token entries are under cache_root / "tokens"."""
    root = tmp_path / "cache"
    monkeypatch.setenv("NANOLAB_CACHE", str(root))
    return root


@pytest.fixture
def corpus(tmp_path, shakespeare) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare[:20_000], encoding="utf-8")
    return path


def tokens_folder(cache_root: Path) -> list[str]:
    return sorted(p.name for p in (cache_root / "tokens").iterdir())


def split_ids(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The old rule, computed here from the whole text: the first 90% of its tokens train."""
    ids = tokenizer.encode(text)
    n_train = int(0.9 * len(ids))
    return ids[:n_train], ids[n_train:]


# ----------------------------------------------------------------------------- the entry


def test_an_entry_holds_the_tokens_the_tokenizer_and_their_provenance(corpus, cache_root, shakespeare):
    text = shakespeare[:20_000]
    data = load_data(DataConfig(path=str(corpus), block_size=8))

    entry = find_entry(resolve_source(DataConfig(path=str(corpus))), DataConfig(path=str(corpus)))
    assert tokens_folder(cache_root) == [entry.path.name, entry.path.name + ".lock"]
    assert entry.path.name.startswith("char-") and sorted(p.name for p in entry.path.iterdir()) == ENTRY_FILES
    tokenizer = CharTokenizer(sorted(set(text)))
    train, val = split_ids(tokenizer, text)
    assert entry.token_file("train").read_bytes() == np.array(train, np.uint8).tobytes()
    assert entry.token_file("val").read_bytes() == np.array(val, np.uint8).tobytes()
    assert json.loads((entry.path / "tokenizer.json").read_text()) == tokenizer.to_dict()
    sha256 = hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert json.loads((entry.path / "provenance.json").read_text()) == {
        "sources": {"train": [{"path": str(corpus), "bytes": 20_000, "sha256": sha256}], "val": []},
        "recipe": {"cache_format": 2, "split": 0.9, "tokenizer": "char", "vocab_size": None, "train": [sha256],
                   "val": []},
        "vocab_size": tokenizer.vocab_size, "dtype": "uint8",
        "tokens": {"train": 18_000, "val": 2_000}, "chars": {"train": 18_000, "val": 2_000},
        "xxh3_128": {split: xxhash.xxh3_128(np.array(ids, np.uint8).tobytes()).hexdigest()
                     for split, ids in (("train", train), ("val", val))},
    }
    assert data.train.tolist() == train and data.val.tolist() == val


def test_later_runs_open_the_entry_and_a_changed_corpus_gets_a_new_one(corpus, cache_root, tmp_path):
    load_data(DataConfig(path=str(corpus), block_size=8))
    [entry] = [p for p in (cache_root / "tokens").iterdir() if p.is_dir()]
    written = entry.stat().st_mtime_ns, (entry / "train.bin").stat().st_mtime_ns

    moved = tmp_path / "moved.txt"
    corpus.rename(moved)  # the key is the content, not the path
    load_data(DataConfig(path=str(moved), block_size=8))
    assert (entry.stat().st_mtime_ns, (entry / "train.bin").stat().st_mtime_ns) == written

    moved.write_text(moved.read_text() + "one more line\n")
    load_data(DataConfig(path=str(moved), block_size=8))
    assert len([p for p in (cache_root / "tokens").iterdir() if p.is_dir()]) == 2


def test_a_file_is_hashed_once_until_it_changes_even_with_its_mtime_set_back(corpus, cache_root, monkeypatch):
    from nanolab.data import cache

    hashed = []
    monkeypatch.setattr(cache, "sha256_file", lambda path: hashed.append(path) or sources_sha256(path))
    first = load_data(DataConfig(path=str(corpus), block_size=8))
    load_data(DataConfig(path=str(corpus), block_size=8))
    assert hashed == [corpus]  # the second lookup read the remembered hash

    stat = corpus.stat()
    corpus.write_text(corpus.read_text().replace("First", "Fir$t"), encoding="utf-8")  # same size
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime set back: the ctime still tells
    assert corpus.stat().st_size == stat.st_size and corpus.stat().st_mtime_ns == stat.st_mtime_ns
    edited = load_data(DataConfig(path=str(corpus), block_size=8))
    assert hashed == [corpus, corpus] and edited.tokenizer.chars != first.tokenizer.chars


def sources_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("vocab_size, dtype", [(65, "uint8"), (256, "uint8"), (257, "uint16"), (65_536, "uint16"),
                                               (65_537, "uint32")])
def test_tokens_take_the_smallest_dtype_that_holds_the_vocabulary(vocab_size, dtype):
    assert token_dtype(vocab_size) == np.dtype(dtype)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_tokenizing_in_pieces_gives_the_tokens_of_the_whole_text(tokenizer, corpus, cache_root, monkeypatch,
                                                                 shakespeare):
    monkeypatch.setattr(sources, "PIECE_BYTES", 1000)  # 20 KB of text: about twenty pieces
    text = shakespeare[:20_000]
    data = load_data(DataConfig(path=str(corpus), tokenizer=tokenizer, vocab_size=300, block_size=8))

    whole = (CharTokenizer if tokenizer == "char" else BPETokenizer).from_texts([text], 300)
    assert data.tokenizer.to_dict() == whole.to_dict()
    train, val = split_ids(whole, text)
    assert data.train.tolist() == train and data.val.tolist() == val
    val_chars = len(whole.decode(val))
    assert data.chars == {"train": len(text) - val_chars, "val": val_chars}


def test_a_bpe_tokenizer_is_trained_once_for_the_runs_that_share_it(corpus, cache_root, monkeypatch):
    trainings = []
    train = BPETokenizer.from_texts.__func__
    monkeypatch.setattr(BPETokenizer, "from_texts",
                        classmethod(lambda cls, texts, size=None: trainings.append(size) or train(cls, texts, size)))
    cfg = DataConfig(path=str(corpus), tokenizer="bpe", vocab_size=300, block_size=8)
    first, *others = [load_data(cfg) for _ in range(3)]

    assert trainings == [300]
    assert all(d.tokenizer.to_dict() == first.tokenizer.to_dict() for d in others)


# ----------------------------------------------------------------------------- killed and concurrent preparations

PREPARE = textwrap.dedent("""\
    import hashlib, os, signal, sys, time
    from pathlib import Path
    from nanolab.config import DataConfig
    from nanolab.data import cache, sources

    corpus, mode, signals = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sources.PIECE_BYTES = 1000
    read, write_tokens = cache.read, cache.write_tokens
    tokenizing = []

    def tokenize(*args):
        tokenizing.append(True)
        return write_tokens(*args)

    def read_and_stop(paths, advance):  # stops in the second pass over the text, which writes the tokens
        for i, text in enumerate(read(paths, advance)):
            if tokenizing and i == 5 and mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if tokenizing and i == 5 and mode == "hold":
                (signals / "holding").touch()
                while not (signals / "go").exists():
                    time.sleep(0.01)
            yield text

    cache.read, cache.write_tokens = read_and_stop, tokenize
    while mode == "wait" and not (signals / "holding").exists():  # until the other one holds the lock
        time.sleep(0.01)
    source = sources.resolve_source(DataConfig(path=corpus))
    entry = cache.find_entry(source, DataConfig(path=corpus))
    made = cache.prepare(entry, source)
    tokens = entry.token_file("train").read_bytes() + entry.token_file("val").read_bytes()
    print(made, hashlib.sha256(tokens).hexdigest())
""")


def prepare_in_child(corpus: Path, mode: str, signals: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREPARE, str(corpus), mode, str(signals)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_killed_preparation_leaves_no_entry_and_the_next_one_makes_it_whole(corpus, cache_root, tmp_path):
    killed = prepare_in_child(corpus, "kill", tmp_path)
    killed.communicate(timeout=60)
    assert killed.returncode == -9

    [leftover] = [p for p in (cache_root / "tokens").iterdir() if p.name.endswith(".tmp")]
    entry = leftover.name.split(".")[1]
    assert tokens_folder(cache_root) == sorted([leftover.name, entry + ".lock"])
    assert (leftover / "train.bin").stat().st_size > 0  # it died while writing the tokens

    data = load_data(DataConfig(path=str(corpus), block_size=8))
    assert tokens_folder(cache_root) == [entry, entry + ".lock"]
    text = corpus.read_text()
    assert data.train.tolist() + data.val.tolist() == CharTokenizer(sorted(set(text))).encode(text)


def test_two_preparations_at_once_make_one_entry_that_both_use(corpus, cache_root, tmp_path):
    first, second = prepare_in_child(corpus, "hold", tmp_path), prepare_in_child(corpus, "wait", tmp_path)
    wait_for((tmp_path / "holding").exists, timeout=60, what="the first to hold the lock", every=0.01,
             watch=[first])  # the first holds the lock, midway through the tokens
    assert second.stderr.readline().startswith("nanolab: waiting for another process to prepare ")
    (tmp_path / "go").touch()

    text = corpus.read_text()
    tokens = hashlib.sha256(np.array(CharTokenizer(sorted(set(text))).encode(text), np.uint8).tobytes()).hexdigest()
    assert first.communicate(timeout=60)[0] == f"True {tokens}\n"  # made the entry, of the corpus's tokens
    assert second.communicate(timeout=60)[0] == f"False {tokens}\n"  # waited for it, then read the same entry
    [entry] = [p for p in (cache_root / "tokens").iterdir() if p.is_dir()]
    assert tokens_folder(cache_root) == [entry.name, entry.name + ".lock"]


# ----------------------------------------------------------------------------- sources


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def test_a_folder_or_a_glob_trains_on_its_files_in_name_order(tmp_path, cache_root, shakespeare):
    parts = {"b.txt": shakespeare[:3000], "a.txt": shakespeare[3000:6000], "sub/c.txt": shakespeare[6000:9000],
             ".hidden.txt": "never read"}
    write_files(tmp_path / "corpus", parts)
    text = parts["a.txt"] + parts["b.txt"] + parts["sub/c.txt"]
    expected = CharTokenizer(sorted(set(text))).encode(text)

    for path in (tmp_path / "corpus", tmp_path / "corpus/**/*.txt"):
        data = load_data(DataConfig(path=str(path), block_size=8))
        assert data.train.tolist() + data.val.tolist() == expected
        assert data.tokenizer.decode(data.val.tolist()) == text[len(data.train):]


def test_val_path_gives_the_val_split_its_own_text(tmp_path, cache_root, shakespeare):
    write_files(tmp_path, {"train.txt": shakespeare[:9000], "val.txt": shakespeare[9000:10_000]})
    data = load_data(DataConfig(path=str(tmp_path / "train.txt"), val_path=str(tmp_path / "val.txt"), block_size=8))

    tokenizer = CharTokenizer(sorted(set(shakespeare[:10_000])))  # the vocabulary of both texts
    assert data.tokenizer.to_dict() == tokenizer.to_dict()
    assert data.train.tolist() == tokenizer.encode(shakespeare[:9000])
    assert data.val.tolist() == tokenizer.encode(shakespeare[9000:10_000])
    assert data.chars == {"train": 9000, "val": 1000}


@pytest.mark.parametrize("cfg, message", [
    (dict(path="{d}/*.md"), "data.path = '{d}/*.md': no file matches this pattern"),
    (dict(path="{d}/empty"), "data.path = '{d}/empty': a folder without files; expected UTF-8 text files"),
    (dict(path="{d}/train.txt", val_path="{d}/none.txt"), "data.val_path = '{d}/none.txt': no such file"),
    (dict(path="{d}/train.txt", val_path="{d}/blank.txt"), "{d}/blank.txt: empty: the val split has no text "
     "(data.val_path)"),
    (dict(path="{d}/blank.txt"), "{d}/blank.txt: empty: the train split has no text"),
    (dict(path="{d}/train.txt", val_path="{d}/short.txt"), "{d}/train.txt: too short for data.block_size = 8: "
     "each split needs more tokens than that, and it has 100 train / 4 val tokens"),
    (dict(path="{d}/train.txt", val_path="{d}/latin1.txt"), "{d}/latin1.txt: not UTF-8 text (invalid continuation "
     "byte at byte 4)"),
])
def test_a_bad_source_is_one_line(tmp_path, cache_root, cfg, message):
    write_files(tmp_path, {"train.txt": "abcd\n" * 20, "blank.txt": "", "short.txt": "abc\n"})
    (tmp_path / "latin1.txt").write_bytes(b"caf\n\xe9\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(**{k: v.format(d=tmp_path) for k, v in cfg.items()}, block_size=8))
    assert str(err.value) == message.format(d=tmp_path)


# ----------------------------------------------------------------------------- nanoGPT's files


@pytest.mark.parametrize("meta_format", ["pkl", "json"])
def test_nanogpt_files_are_read_in_place_and_their_vocabulary_round_trips(tmp_path, cache_root, shakespeare,
                                                                          meta_format):
    text = shakespeare[:20_000]
    meta = nanogpt_prepare(tmp_path / "shakespeare_char", text, meta_format)
    data = load_data(DataConfig(path=str(tmp_path / "shakespeare_char"), block_size=8))  # format: auto

    assert data.vocab_size == meta["vocab_size"] and data.tokenizer.chars == sorted(set(text))
    assert data.tokenizer.decode(data.train.tolist()) == text[:18_000]
    assert data.tokenizer.decode(data.val.tolist()) == text[18_000:]
    assert data.tokenizer.encode(text[:500]) == [meta["stoi"][c] for c in text[:500]]
    assert data.train.dtype == np.uint16 and data.chars == {"train": 18_000, "val": 2_000}
    assert not (cache_root / "tokens").exists()  # nothing to tokenize


def test_a_run_trains_on_nanogpt_files(tmp_path, shakespeare):
    nanogpt_prepare(tmp_path / "shakespeare_char", shakespeare[:20_000])
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: shakespeare_char, format: nanogpt_bin, block_size: 16}\n"
                    "model: {n_layer: 1, n_head: 2, n_embd: 16}\n"
                    "train: {batch_size: 4, max_iters: 4, warmup_iters: 1, eval_interval: 4, eval_iters: 1, "
                    "sample_tokens: 8}\ntracking: {wandb: {mode: disabled}}\n")
    result = run(load_spec(spec), show_progress=False)

    assert result.status == "finished" and result.summary["best/step"] == 4
    saved = json.loads((result.run_dir / "tokenizer.json").read_text())
    assert saved == {"type": "char", "chars": "".join(sorted(set(shakespeare[:20_000])))}


class CreatesAFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_a_malicious_meta_pkl_is_refused_before_it_runs(tmp_path, shakespeare):
    folder, marker = tmp_path / "data", tmp_path / "created-by-the-pickle"
    nanogpt_prepare(folder, shakespeare[:2000])
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65, "itos": CreatesAFile(marker), "stoi": {}}))

    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(path=str(folder), block_size=8))

    assert str(err.value) == (f"{folder}/meta.pkl: refused (it names posix.mkdir; a meta.pkl holds only a dict of "
                              "str and int)")
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "val.bin").write_bytes(b"\x01\x00\x02"),
     "{d}/val.bin: 3 bytes is not a whole number of uint16 tokens (nanoGPT's dtype)"),
    (lambda d: (d / "val.bin").write_bytes(b""), "{d}/val.bin: empty: the split has no tokens"),
    (lambda d: np.array([1, 2, 3, 4, 0, 70], np.uint16).tofile(d / "train.bin"),
     "{d}/train.bin: token id 70 at position 5 is >= the vocabulary size 5"),
    (lambda d: (d / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 4, "itos": {0: "a"}, "stoi": {"a": 0}})),
     "{d}/meta.pkl: not nanoGPT's meta: expected {{'vocab_size': V, 'itos': {{id: char}}, 'stoi': {{char: id}}}} "
     "with ids 0 to V - 1 and one character each"),
    (lambda d: (d / "meta.pkl").unlink(),
     "{d}: no meta.pkl or meta.json beside the .bin files: for GPT-2 BPE tokens set data.vocab_size (50304 for "
     "nanoGPT's openwebtext: GPT-2's 50,257 padded), for char tokens add the meta file prepare.py wrote"),
])
def test_bad_nanogpt_files_are_one_line(tmp_path, damage, message):
    folder = tmp_path / "data"
    nanogpt_prepare(folder, "abcd\n" * 40)
    damage(folder)
    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(path=str(folder), format="nanogpt_bin", block_size=8))
    assert str(err.value) == message.format(d=folder)


def test_gpt2_bpe_files_without_a_meta_train_on_the_spec_vocabulary(tmp_path, cache_root, shakespeare, capsys):
    ids = gpt2_prepare(tmp_path / "shakespeare", shakespeare[:20_000])
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: shakespeare, vocab_size: 576, block_size: 16}\n"  # format: auto
                    "model: {n_layer: 1, n_head: 2, n_embd: 16}\n"
                    "train: {batch_size: 4, max_iters: 4, warmup_iters: 1, eval_interval: 4, eval_iters: 1, "
                    "sample_tokens: 8}\ntracking: {wandb: {mode: disabled}}\n")
    result = run(load_spec(spec), show_progress=False)

    assert result.status == "finished" and not (cache_root / "tokens").exists()
    assert json.loads((result.run_dir / "tokenizer.json").read_text()) == {"type": "ids", "vocab_size": 576}
    evaluation = [row for row in result.folder.metrics() if "val/loss" in row][0]
    assert "val/bpc" not in evaluation  # the characters behind GPT-2's ids are not known without its tokenizer
    [(step, text)] = result.folder.samples()
    sample = text.split()
    assert step == 4 and len(sample) == 1 + 8 and all(0 <= int(i) < 576 for i in sample)  # the generated ids, written out

    assert main(["sample", str(result.run_dir), "--prompt", f"{ids[0]} {ids[1]}", "--tokens", "3"]) == 0
    assert capsys.readouterr().out.split()[:2] == [str(ids[0]), str(ids[1])]
    assert main(["sample", str(result.run_dir), "--prompt", "ROMEO:"]) == 2
    assert capsys.readouterr().err == ("nanolab: error: this run's tokens have no text: give them as ids below 576 "
                                       "separated by spaces, not 'ROMEO:'\n")

    assert main(["data", "info", str(spec)]) == 0
    n = len(ids) * 9 // 10
    assert f"tokens:     {n:,} train / {len(ids) - n:,} val (uint16, ids checked)" in capsys.readouterr().out


def test_gpt2_bpe_ids_beyond_the_spec_vocabulary_are_refused(tmp_path, shakespeare):
    ids = gpt2_prepare(tmp_path / "shakespeare", shakespeare[:5_000])
    with pytest.raises(NanolabError) as err:
        load_data(DataConfig(path=str(tmp_path / "shakespeare"), vocab_size=300, block_size=8))
    first = next(i for i, t in enumerate(ids) if t >= 300)
    assert str(err.value) == (f"{tmp_path}/shakespeare/train.bin: token id {ids[first]} at position {first} is >= "
                              "the vocabulary size 300")


# ----------------------------------------------------------------------------- spec keys and the command


@pytest.mark.parametrize("data, message", [
    ("{format: bin}", "data.format = 'bin': one of: auto, text, nanogpt_bin"),
    ("{format: nanogpt_bin}", "data.format = 'nanogpt_bin': nanogpt_bin reads the folder that data.path names: "
     "set data.path"),
    ("{path: d, format: nanogpt_bin, val_path: v.txt}", "data.val_path = '{d}/v.txt': null with format nanogpt_bin, "
     "whose val.bin is the val split"),
])
def test_data_keys_are_checked_in_the_spec(tmp_path, data, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data: {data}\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(err.value) == f"{spec}: {message.replace('{d}', str(tmp_path))}"  # a relative path: the spec's


def test_data_prepare_then_info(tmp_path, cache_root, corpus, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: corpus.txt}\n")
    entry = find_entry(resolve_source(DataConfig(path=str(corpus))), DataConfig(path=str(corpus))).path
    head = [f"source:     {corpus} (text)", f"train file: {corpus} (20,000 bytes)", "val:        the last 10% of the tokens"]

    assert main(["data", "info", str(spec)]) == 0
    assert capsys.readouterr().out.splitlines() == head + [
        "tokenizer:  char, built when the cache entry is prepared",
        f"cache:      {entry} (not prepared yet: `nanolab data prepare` or the first run makes it)"]
    assert main(["data", "prepare", str(spec)]) == 0
    assert main(["data", "prepare", str(spec)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"prepared: {entry}", f"already prepared: {entry}"]
    assert main(["data", "info", str(spec)]) == 0
    vocab = len(set(corpus.read_text()))
    assert capsys.readouterr().out.splitlines() == head + [
        f"tokenizer:  char (vocabulary {vocab})", "tokens:     18,000 train / 2,000 val (uint8, ids checked)",
        "content:    unchanged since its checksum last matched", f"cache:      {entry}"]


def test_data_errors_are_one_line_and_exit_2(tmp_path, cache_root, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {path: missing.txt}\n")
    assert main(["data", "prepare", str(spec)]) == 2
    assert capsys.readouterr().err == f"nanolab: error: data.path = '{tmp_path}/missing.txt': no such file\n"


def test_a_val_path_in_a_spec_is_relative_to_the_spec_and_in_set_to_the_cwd(tmp_path, monkeypatch):
    from nanolab import load_spec

    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "own_val.yaml"
    spec.write_text("data: {path: ../train.txt, val_path: ../val.txt}\n")
    cfg = load_spec(spec)
    assert (cfg.data.path, cfg.data.val_path) == (str(tmp_path / "train.txt"), str(tmp_path / "val.txt"))
    monkeypatch.chdir(tmp_path / "specs")
    assert load_spec(spec, ["data.val_path=other.txt"]).data.val_path == str(tmp_path / "specs" / "other.txt")
