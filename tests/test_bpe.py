"""The byte-level BPE tokenizer: exact round trips, its vocabulary size, deterministic training, and a run
that saves it, resumes with it and samples with it without the corpus."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import shared_shakespeare, tiny_yaml

from nanolab import load_spec, run
from nanolab.config import DataConfig
from nanolab.data import TRAIN_FRACTION, BPETokenizer, load_data, tokenizer_from_dict
from nanolab.runner import Stop, load_trained
from nanolab.spec import SpecError
from nanolab.vocab import VAL_BPC, VAL_LOSS

TINY_BPE = tiny_yaml("tiny_bpe", seed=7, data={"path": "excerpt.txt", "tokenizer": "bpe", "vocab_size": 300},
                     max_iters=10, eval_interval=5, eval_iters=1, checkpoint_interval=1)


@pytest.fixture(scope="module")
def corpus() -> str:
    return shared_shakespeare().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    """The default-size tokenizer trained on all of Tiny Shakespeare, once."""
    return BPETokenizer.from_texts([corpus])


def test_text_round_trips_exactly(bpe, corpus):
    excerpts = [corpus[:2000], corpus[500_000:503_000], corpus[-1000:], "  \n\n  odd\twhitespace \r\n", ""]
    unseen = ["naïve — 東京", "emoji 🙂, the ﬁ ligature", "\x00\x7f control bytes"]
    for text in excerpts + unseen:
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(corpus[:2000])) < 2000 / 2.5  # merges compress: ~3 characters per token


def test_vocab_size_is_honoured_with_a_default(bpe, corpus):
    assert bpe.vocab_size == BPETokenizer.default_vocab_size == 4096
    small = BPETokenizer.from_texts([corpus[:100_000]], vocab_size=300)
    assert small.vocab_size == 300
    assert max(small.encode(corpus[:5000])) < 300


def test_vocab_size_is_checked_in_the_spec_and_ignored_by_char(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {tokenizer: bpe, vocab_size: 100}\n")
    with pytest.raises(SpecError, match="data.vocab_size = 100: must be >= 256 for bpe"):
        load_spec(spec)
    with pytest.raises(SpecError, match="data.vocab_size = 0: must be > 0"):
        load_spec(spec, overrides=["data.tokenizer=char", "data.vocab_size=0"])
    assert load_data(DataConfig(vocab_size=512)).vocab_size == 65


def test_training_is_deterministic_across_processes(corpus):
    """A resumed run rebuilds its tokenizer in a new process and compares it with the saved one."""
    excerpt = corpus[:100_000]
    here = BPETokenizer.from_texts([excerpt], vocab_size=512).to_dict()
    code = ("import json, sys; from nanolab.data import BPETokenizer; "
            "print(json.dumps(BPETokenizer.from_texts([sys.stdin.read()], vocab_size=512).to_dict()))")
    out = subprocess.run([sys.executable, "-c", code], input=excerpt, capture_output=True, text=True,
                         encoding="utf-8", check=True).stdout
    assert json.loads(out) == here


def test_to_dict_is_json_and_holds_the_whole_tokenizer(bpe, corpus):
    state = json.loads(json.dumps(bpe.to_dict()))
    assert state["type"] == "bpe"
    loaded = tokenizer_from_dict(state)
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == bpe.vocab_size
    assert loaded.encode(corpus[:5000]) == bpe.encode(corpus[:5000])
    assert loaded.to_dict() == bpe.to_dict()


def check_bits_per_character(folder, tokenizer, text):
    """val/bpc = val/loss x tokens / characters of the val split / ln 2, from counts made here: the split's
    first token's character offset in the text (the tokenizer's own offsets), not nanolab.data's count."""
    encoding = tokenizer.tokenizer.encode(text)
    n_train = int(TRAIN_FRACTION * len(encoding.ids))
    val_tokens = len(encoding.ids) - n_train
    val_chars = len(text) - encoding.offsets[n_train][0]
    assert val_chars / val_tokens > 1.3  # more than one character per token (300 tokens: 44 merges)
    evals = [row for row in folder.metrics() if VAL_BPC in row]
    assert [row["step"] for row in evals] == [5, 10]
    for row in evals:
        assert row[VAL_BPC] == pytest.approx(row[VAL_LOSS] * val_tokens / val_chars / math.log(2), rel=1e-9)


def test_a_run_saves_resumes_and_samples_with_its_tokenizer(tmp_path, monkeypatch, corpus):
    (tmp_path / "excerpt.txt").write_text(corpus[:100_000], encoding="utf-8")
    spec = tmp_path / "tiny_bpe.yaml"
    spec.write_text(TINY_BPE)
    cfg = load_spec(spec)

    def stop_at_5(step, metrics):
        if step == 5:
            raise Stop("pruned")

    stopped = run(cfg, on_eval=stop_at_5, show_progress=False)
    assert stopped.status == "pruned"
    saved = json.loads((stopped.run_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = tokenizer_from_dict(saved)
    assert tokenizer.vocab_size == 300 and tokenizer.to_dict() == saved
    assert tokenizer.decode(tokenizer.encode(corpus[:3000])) == corpus[:3000]
    # resuming reads the tokenizer from the token cache and refuses one other than the saved one
    assert run(cfg, resume_dir=stopped.run_dir, show_progress=False).status == "finished"
    check_bits_per_character(stopped.folder, tokenizer, corpus[:100_000])

    (tmp_path / "excerpt.txt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("NANOLAB_CACHE", str(empty))
    monkeypatch.setenv("NANOLAB_SHAKESPEARE_URL", "http://127.0.0.1:9/")  # nothing may be downloaded
    model, tokenizer, device = load_trained(stopped.run_dir, device="cpu")
    idx = torch.tensor([tokenizer.encode("ROMEO:")], dtype=torch.long, device=device)
    text = tokenizer.decode(model.generate(idx, 12, generator=torch.Generator().manual_seed(0))[0].tolist())
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    assert not any(empty.iterdir())
