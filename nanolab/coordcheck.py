"""`nanolab coordcheck SPEC --widths 32 64 128 256`: μP's coordinate check (Yang et al. 2022, "Tensor Programs V",
arXiv:2203.03466, section 4 and its figure 5).

The spec's model is built at each width (n_embd; every other key as the spec sets it, n_head included), trained
for a few steps with the spec's optimizer at its peak lr (no schedule: the check is about the size of one update)
on the spec's data, and the RMS of every layer's output is recorded at each step by forward hooks. Under μP the
RMS after training stays flat as width grows; under the standard parametrization Adam's updates grow the
activations (and the logits) with width. The slope of log RMS over log width at the last step says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from nanolab.components.optim import build_optimizer
from nanolab.config import Config
from nanolab.config_dicts import from_dict, to_dict
from nanolab.data import Data, load_data
from nanolab.errors import NanolabError, SpecError
from nanolab.files import atomic_path, write_text
from nanolab.model import GPT, build_model
from nanolab.plan import applied
from nanolab.train_loop import seed_everything


@dataclass(frozen=True)
class CoordCheck:
    """RMS per (width, step, layer) and, per layer, the slope of log RMS over log width at the last step."""

    rms: pd.DataFrame  # columns width, step, layer, rms
    parametrization: str

    @property
    def slopes(self) -> pd.Series:
        last = self.rms[self.rms.step == self.rms.step.max()]
        return last.groupby("layer", sort=False).apply(
            lambda g: float(np.polyfit(np.log2(g.width), np.log2(g.rms), 1)[0]), include_groups=False)

    def table(self) -> str:
        last = self.rms[self.rms.step == self.rms.step.max()]
        wide = last.pivot(index="layer", columns="width", values="rms").loc[list(self.slopes.index)]
        wide.columns = [f"w={w}" for w in wide.columns]
        wide["slope"] = self.slopes
        return (f"RMS of each layer's output after {self.rms.step.max()} steps ({self.parametrization}); slope: "
                f"log2 RMS per doubling of width\n{wide.to_string(float_format=lambda x: f'{x:.4g}')}")


def layers(model: GPT) -> dict[str, torch.nn.Module]:
    """The modules whose outputs are checked: the embedding, each block's attention, MLP and output, the logits."""
    named = {"embedding": model.drop}
    for i, block in enumerate(model.blocks):
        named.update({f"block{i}.attn": block.attn, f"block{i}.mlp": block.mlp, f"block{i}": block})
    return {**named, "logits": model}


def width_config(cfg: Config, width: int) -> Config:
    try:
        return from_dict(Config, applied(to_dict(cfg), [("model.n_embd", width)]), f"--widths {width}")
    except SpecError as exc:
        raise NanolabError(str(exc)) from None


def check_width(cfg: Config, data: Data, steps: int) -> list[dict]:
    """Train `cfg` for `steps` steps; the RMS of every checked layer at each step (before that step's update)."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model, vocab_size=data.vocab_size, block_size=cfg.data.block_size)
    optimizer = build_optimizer(model, cfg.train, "cpu")
    gen, rows, step = torch.Generator().manual_seed(cfg.seed), [], 0

    def record(name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            rows.append({"width": cfg.model.n_embd, "step": step, "layer": name,
                         "rms": out.detach().float().pow(2).mean().sqrt().item()})
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in layers(model).items()]
    for step in range(steps + 1):  # step `steps` is the forward pass after the last update
        x, y = data.get_batch("train", cfg.train.batch_size, cfg.data.block_size, gen)
        _, loss = model(x, y)
        if step < steps:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for handle in handles:
        handle.remove()
    return rows


def coord_check(cfg: Config, widths: list[int], steps: int) -> CoordCheck:
    if steps < 1 or len(widths) < 2 or min(widths) < 1:
        raise NanolabError(f"--widths {' '.join(map(str, widths))} --steps {steps}: expected at least two widths "
                           "> 0 and steps >= 1")
    configs, data = [width_config(cfg, w) for w in sorted(set(widths))], load_data(cfg.data)
    rows = [row for c in configs for row in check_width(c, data, steps)]
    return CoordCheck(pd.DataFrame(rows), cfg.model.parametrization)


def plot(check: CoordCheck, path: Path) -> None:
    """RMS against width, one panel per step, one line per layer (log-log)."""
    steps = sorted(check.rms.step.unique())
    fig = Figure(figsize=(3.2 * len(steps), 3.4), layout="constrained")
    FigureCanvasBase(fig)
    for ax, step in zip(fig.subplots(1, len(steps), sharey=True, squeeze=False)[0], steps):
        for layer, g in check.rms[check.rms.step == step].groupby("layer", sort=False):
            ax.plot(g.width, g.rms, marker="o", label=layer)
        ax.set(xscale="log", yscale="log", xlabel="width (n_embd)", title=f"step {step}")
    fig.axes[0].set_ylabel(f"RMS of the output ({check.parametrization})")
    fig.axes[-1].legend(fontsize="x-small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))


def write(check: CoordCheck, out: Path) -> str:
    """coordcheck.csv, coordcheck.png and table.txt in `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    table = check.table()
    write_text(out / "coordcheck.csv", check.rms.to_csv(index=False))
    write_text(out / "table.txt", table + "\n")
    plot(check, out / "coordcheck.png")
    return table
