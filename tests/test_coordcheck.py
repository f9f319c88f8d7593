"""`nanolab coordcheck`: on the same tiny model, every layer's activation size is flat across widths under μP and
grows with width under the standard parametrization (Yang et al. 2022's coordinate check), end to end from the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nanolab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread for tiny models

SPEC = """name: cc
data: {block_size: 32}
model: {n_layer: 2, n_head: 2, n_embd: 32}
train: {batch_size: 8, lr: 1.0e-2}
"""
WIDTHS = ["32", "64", "128", "256"]



def slopes(tmp_path, *sets: str) -> pd.Series:
    """Per layer, the least-squares slope of log2 RMS over log2 width after the last step, from the CSV written."""
    spec, out = tmp_path / "cc.yaml", tmp_path / "-".join(sets or ["standard"])
    spec.write_text(SPEC)
    assert main(["coordcheck", str(spec), "--widths", *WIDTHS, "--steps", "4", "--out", str(out),
                 *(["--set", *sets] if sets else [])]) == 0
    assert (out / "coordcheck.png").stat().st_size > 0 and "slope" in (out / "table.txt").read_text()
    rms = pd.read_csv(out / "coordcheck.csv")
    assert sorted(rms.width.unique()) == [32, 64, 128, 256] and sorted(rms.step.unique()) == [0, 1, 2, 3, 4]
    last = rms[rms.step == 4]
    return last.groupby("layer").apply(lambda g: np.polyfit(np.log2(g.width), np.log2(g.rms), 1)[0],
                                       include_groups=False)


def test_activations_are_flat_across_width_under_mup_and_grow_under_standard(tmp_path):
    standard = slopes(tmp_path)
    mup = slopes(tmp_path, "model.parametrization=mup", "model.mup_base_width=32")
    assert set(standard.index) == {"embedding", "logits", *(f"block{i}{part}" for i in (0, 1)
                                                            for part in ("", ".attn", ".mlp"))}
    assert mup.abs().max() < 0.35, mup  # flat: under 1.27x per doubling of width
    hidden = standard.drop(["embedding", "logits"])
    assert hidden.min() > 1.0 and standard["logits"] > 0.4, standard  # grows: over 2x per doubling in the blocks


def test_a_width_the_heads_do_not_divide_is_one_line(tmp_path, capsys):
    spec = tmp_path / "cc.yaml"
    spec.write_text(SPEC)
    assert main(["coordcheck", str(spec), "--widths", "32", "33"]) == 2
    err = capsys.readouterr().err
    assert err == ("nanolab: error: --widths 33: model.n_head = 2: n_embd (33) must be divisible by n_head\n")
