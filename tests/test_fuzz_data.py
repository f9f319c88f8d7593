"""Property-based fuzz of `nanolab data` (issue #28): its arguments and `data.*` values, and nanoGPT folders whose
meta file is generated JSON or a pickle of plain values (beside .bin files of any dtype). Every example exits 0,
or 2 with one `nanolab: error:` line, within SECONDS_PER_EXAMPLE, and never with a traceback.

NANOLAB_FUZZ_EXAMPLES=2000 runs the issue's 2,000 examples per surface; the default keeps the suite short.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from helpers import FUZZ, HUGE_INTS, KEYS, typed_values
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nanolab.cli import main
from nanolab.spec import format_override

EXAMPLES = int(os.environ.get("NANOLAB_FUZZ_EXAMPLES", "60"))
SECONDS_PER_EXAMPLE = 20  # a tiny corpus prepares (BPE trained) in well under a second
DATA_KEYS = sorted(key for key in KEYS if key.startswith("data.") and key != "data.dataset")


def nanolab(argv: list[str], cache: Path) -> tuple[int, str]:
    err = io.StringIO()
    start = time.monotonic()
    with mock.patch.dict(os.environ, {"NANOLAB_CACHE": str(cache)}), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert time.monotonic() - start < SECONDS_PER_EXAMPLE, argv
    return code, err.getvalue()


def assert_exit_0_or_one_line(code: int, err: str) -> None:
    event(f"exit {code}")
    assert "Traceback" not in err, err
    if code != 0:
        assert code == 2 and err.startswith("nanolab: error: ") and err.count("\n") == 1, (code, err)


# ----------------------------------------------------------------------------- arguments and data.* values

values = st.one_of(st.none(), st.booleans(), st.sampled_from(HUGE_INTS), st.integers(-3, 70_000),
                   st.text(max_size=12), st.sampled_from(["corpus.txt", "nano", "*.txt", "", ".", "nano/*.bin"]))
data_sets = st.lists(st.tuples(st.sampled_from(DATA_KEYS), st.booleans()).flatmap(
    lambda pair: (typed_values(pair[0]) if pair[1] else values).map(lambda v: (pair[0], v))), max_size=3)


@settings(FUZZ, max_examples=EXAMPLES)
@given(action=st.sampled_from(["prepare", "info", "verify", "prepar", ""]), rebuild=st.booleans(), sets=data_sets,
       spec_text=st.sampled_from(["data: {path: corpus.txt, block_size: 8}\n", "data: {path: nano}\n", "data: 3\n",
                                  ""]))
def test_data_commands_exit_0_or_one_line(action, rebuild, sets, spec_text):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "corpus.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 30)
        write_nanogpt(folder / "nano", np.arange(400) % 7, np.uint16, {"vocab_size": 7, "itos": dict(enumerate(
            "abcdef\n")), "stoi": {c: i for i, c in enumerate("abcdef\n")}}, "pkl")
        spec = folder / "spec.yaml"
        spec.write_text(spec_text)
        argv = ["data", action, str(spec), *(["--rebuild"] if rebuild else []),
                *(f"--set={format_override(key, value)}" for key, value in sets)]
        try:
            code, err = nanolab(argv, folder / "cache")
        except SystemExit as exc:  # argparse: its usage and one line, exit 2
            assert exc.code == 2
            event("argparse")
            return
        assert_exit_0_or_one_line(code, err)


# ----------------------------------------------------------------------------- nanoGPT meta files and .bin files

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE_INTS) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12)
ids = st.one_of(st.integers(-2, 70), st.sampled_from(HUGE_INTS), st.sampled_from(["0", "1", "²", "٣", "-1", " 1", "x"]))
near_meta = st.fixed_dictionaries({}, optional={
    "vocab_size": st.one_of(st.integers(-1, 70), st.sampled_from([True, False, 2**16, 2**16 + 1, 10**10] + HUGE_INTS),
                            st.text(max_size=3)),
    "itos": st.dictionaries(ids, st.text(max_size=2) | st.integers(), max_size=8),
    "stoi": st.dictionaries(st.text(max_size=2), ids, max_size=8),
})
pickle_only = st.recursive(  # pickles carry what JSON cannot: int and tuple keys, bytes, sets
    st.none() | st.booleans() | st.integers() | st.binary(max_size=4) | st.text(max_size=2),
    lambda inner: st.dictionaries(st.integers() | st.text(max_size=2), inner, max_size=4) | st.tuples(inner)
    | st.frozensets(st.integers(), max_size=3), max_leaves=10)


def nanogpt_meta(kind: str, vocab: int) -> dict:
    chars = [chr(48 + i) for i in range(vocab)]
    itos = {(str(i) if kind == "json" else i): c for i, c in enumerate(chars)}
    return {"vocab_size": vocab, "itos": itos, "stoi": {c: i for i, c in enumerate(chars)}}


def write_nanogpt(folder: Path, tokens: np.ndarray, dtype, meta: object, kind: str) -> None:
    folder.mkdir()
    n = len(tokens) * 9 // 10
    np.asarray(tokens[:n]).astype(dtype).tofile(folder / "train.bin")
    np.asarray(tokens[n:]).astype(dtype).tofile(folder / "val.bin")
    if kind == "json":
        (folder / "meta.json").write_text(json.dumps(meta))
    elif kind == "pkl":
        (folder / "meta.pkl").write_bytes(pickle.dumps(meta))
    elif kind == "raw":
        (folder / "meta.pkl").write_bytes(meta)


metas = st.one_of(
    st.tuples(st.just("json"), plain | near_meta),
    st.tuples(st.just("pkl"), plain | near_meta | pickle_only),
    st.tuples(st.just("raw"), st.binary(max_size=64)),
    st.sampled_from(["json", "pkl"]).flatmap(lambda k: st.tuples(st.just(k), st.integers(1, 70).map(
        lambda v: nanogpt_meta(k, v)))),  # valid metas, so that the .bin checks are reached
    st.just(("none", None)),
)


@settings(FUZZ, max_examples=EXAMPLES)
@given(meta=metas, tokens=st.lists(st.integers(0, 2**16 - 1), min_size=0, max_size=300),
       dtype=st.sampled_from([np.uint16, np.uint16, np.uint8, np.int32, np.int64]),
       vocab_size=st.none() | st.integers(1, 2**17), action=st.sampled_from(["info", "prepare", "verify"]))
def test_nanogpt_folders_exit_0_or_one_line(meta, tokens, dtype, vocab_size, action):
    kind, value = meta
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_nanogpt(folder / "nano", np.array(tokens, dtype=np.int64), dtype, value, kind)
        spec = folder / "spec.yaml"
        spec.write_text(f"data: {{path: nano, block_size: 4, vocab_size: {json.dumps(vocab_size)}}}\n")
        assert_exit_0_or_one_line(*nanolab(["data", action, str(spec)], folder / "cache"))
