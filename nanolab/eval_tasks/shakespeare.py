"""The dataset of the nanolab_shakespeare task: a run's val split as text, read through nanolab's data pipeline."""

from __future__ import annotations

import datasets

from nanolab.config import DataConfig
from nanolab.config_dicts import from_dict
from nanolab.data import load_data


def val_text(data: dict | None = None) -> str:
    """The val split of `data` (a DataConfig as a dict; default: Tiny Shakespeare, one token per character)."""
    loaded = load_data(from_dict(DataConfig, data or {}, "nanolab_shakespeare metadata"))
    return loaded.tokenizer.decode(loaded.split("val").tolist())


def validation(data: dict | None = None, **_) -> datasets.DatasetDict:
    """lm-eval's custom_dataset: called with the task's metadata (its `version`, and `data` from nanolab eval)."""
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list([{"text": val_text(data)}])})
