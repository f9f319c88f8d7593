"""Scaling ladders: an ablation file's `scale:` block runs every variant at every size x compute budget.

    # experiments/ablations/scale_activation.yaml
    experiment: ../baseline.yaml
    overrides: {model.n_head: 2, train.final_eval: true}
    grid: {model.activation: [gelu, relu2]}
    scale:
      sizes: [[16, 2], [32, 2], [64, 2]]      # [n_embd, n_layer] pairs (n_head: the experiment's)
      budgets: [3.0e10, 1.0e11, 3.0e11]       # train.max_flops of each run (nanolab counts 6N + attention per token)

Every (variant, size, budget, seed) is one cell of the ablation: a normal run proposed to the launcher, with the
ablation's workers, Slurm, resume and status, and `model.n_embd`, `model.n_layer`, `train.max_flops` among the
keys the cell varies (its label reads `activation=gelu,w16x2,C3e+10`). The learning rate at each size is the
experiment's (fixed), transferred by μP (set `model.parametrization: mup` and `model.mup_base_width` in the
overrides), or tuned for each point by the file's `tune:` block. `nanolab report` fits the ladder
(nanolab.analysis.scaling). This module only turns the block into variants; `nanolab.ablate` proposes the cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanolab.config import ConfigError
from nanolab.config_dicts import from_dict
from nanolab.errors import SpecError
from nanolab.plan import Plan

LADDER_KEYS = ("model.n_embd", "model.n_layer", "train.max_flops")


@dataclass(frozen=True)
class ScaleBlock:
    """An ablation file's `scale:` block as written."""

    sizes: list
    budgets: list

    def __post_init__(self):
        pairs = all(isinstance(s, list) and len(s) == 2 and all(type(v) is int and v > 0 for v in s)
                    for s in self.sizes)
        if not self.sizes or not pairs:
            raise ConfigError("sizes", self.sizes, "expected a list of [n_embd, n_layer] pairs of integers > 0")
        numbers = all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in self.budgets)
        if not self.budgets or not numbers:
            raise ConfigError("budgets", self.budgets, "expected a list of train.max_flops values > 0")
        for key in ("sizes", "budgets"):
            values = [tuple(v) if isinstance(v, list) else v for v in getattr(self, key)]
            if len(set(values)) < len(values):
                raise ConfigError(key, getattr(self, key), "expected each value once")


def point_label(n_embd: int, n_layer: int, budget: float) -> str:
    return f"w{n_embd}x{n_layer},C{budget:.3g}"


def ladder(plan: Plan, raw: Any, variants: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Each (label, changes) variant (none: the experiment itself) at every size x budget of the `scale:` block
    `raw`; the variants unchanged when the file has none. The ladder's keys may be varied or `--set` nowhere else."""
    if raw is None:
        return variants
    variants = variants or [("", {})]
    block = from_dict(ScaleBlock, raw, str(plan.path), "scale.")
    for key in LADDER_KEYS:
        where = [f"--set {key}" for k, _ in plan.cli if k == key] + [f"`{text}`" for text, v in variants if key in v]
        if where:
            raise SpecError(f"{plan.path}: scale: varies {key}, which {where[0]} also sets; set it in one place")
    return [(f"{text},{point_label(w, d, c)}" if text else point_label(w, d, c),
             {**changes, "model.n_embd": w, "model.n_layer": d, "train.max_flops": float(c)})
            for text, changes in variants for (w, d) in block.sizes for c in block.budgets]
