"""The model card (README.md) of a Hugging Face export: YAML front matter in the Hub's format, then what the run
trained, how well (final and best val/loss with val/bpc), on what data, with which code, and how it was made."""

from __future__ import annotations

import yaml

from nanolab import __version__
from nanolab import vocab as v
from nanolab.config import Config
from nanolab.runfolder import RunFolder


SPECIAL_TOKENS = """BOS, EOS and PAD (and UNK for a character vocabulary) are all the newline token: the model was
trained on running text without any special token, so none was added. A text starts after a line, `generate` stops
at the end of a line (pass `eos_token_id=[]` with `max_new_tokens` for more), padding is masked by the attention
mask, and a character outside the vocabulary reads as a newline."""
NO_TEXT = "None: the run's tokens are ids without text, and the export has no tokenizer; give it token ids."


def best_row(folder: RunFolder, step: int | None) -> dict:
    """The logged evaluation row at `step` (the best one), or {}."""
    return next((row for row in folder.metrics() if row["step"] == step and v.VAL_LOSS in row), {})


def figure(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def results(folder: RunFolder) -> str:
    summary = folder.read_summary()
    best = best_row(folder, summary.get(v.BEST_STEP))
    rows = [("final", summary.get(v.STEPS), summary.get(v.final(v.VAL_LOSS)), summary.get(v.final(v.VAL_BPC))),
            ("best", summary.get(v.BEST_STEP), summary.get(v.BEST_VAL_LOSS), best.get(v.VAL_BPC))]
    lines = ["| evaluation | step | val/loss (nats/token) | val/bpc (bits/character) |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {step if step is not None else '—'} | {figure(loss)} | {figure(bpc)} |"
              for name, step, loss, bpc in rows]
    return "\n".join(lines)


def front_matter(cfg: Config, model_class: str) -> str:
    tags = list(dict.fromkeys(["nanolab", model_class, f"tokenizer-{cfg.data.tokenizer}", *cfg.tracking.tags]))
    matter = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags}
    return f"---\n{yaml.safe_dump(matter, sort_keys=False)}---\n"


def model_card(folder: RunFolder, cfg: Config, which: str, model_class: str) -> str:
    """The README.md of the export of `folder`'s `which` checkpoint as `model_class`."""
    meta = folder.read_meta()
    git = meta.get("git") or {}
    commit = git.get("commit") or "unknown (not a git checkout)"
    dirty = " with uncommitted changes" if git.get("dirty") else ""
    data = cfg.data.path or cfg.data.dataset
    return f"""{front_matter(cfg, model_class)}
# {cfg.name} ({folder.run_id})

A {meta.get('params', 0):,}-parameter GPT trained with nanolab and exported as
`{model_class}`: `AutoModelForCausalLM.from_pretrained(this folder)` computes nanolab's own logits.

## Results

{results(folder)}

val/loss is the mean cross-entropy over `train.eval_iters` batches of the val split; val/bpc is that loss in bits per
character (loss x tokens / characters / ln 2). The exported checkpoint is `{which}`.

## Data

`{data}`, tokenizer `{cfg.data.tokenizer}`, context {cfg.data.block_size} tokens ({meta.get('dataset', '')}).
The val split is {'`' + cfg.data.val_path + '`' if cfg.data.val_path else 'the last 10% of the tokens'}.

## Special tokens

{SPECIAL_TOKENS if folder.read_tokenizer()["type"] != "ids" else NO_TEXT} `max_length` in generation_config.json
is the context.

## How it was made

Trained by nanolab {(meta.get('versions') or {}).get('nanolab', 'unknown')} at git commit `{commit}`{dirty}, run
`{meta.get('run_id', folder.run_id)}` ({meta.get('status', 'unknown status')}, {meta.get('steps', '?')} steps on
{meta.get('device_name') or meta.get('device', 'unknown device')}); exported by nanolab {__version__} with
`nanolab export RUN_FOLDER --to hf OUT_DIR --checkpoint {which}`.

## Config

```yaml
{folder.config_path.read_text(encoding='utf-8').rstrip()}
```
"""
