"""W&B's public API, through which analysis reads runs back from a W&B project."""

from __future__ import annotations

from typing import Any

from nanolab.errors import NanolabError


def project_runs(path: str, group: str | None = None) -> list[Any]:
    """The `wandb.apis.public.Run`s of W&B project "ENTITY/PROJECT", of W&B group `group` if given."""
    import wandb

    try:
        return list(wandb.Api().runs(path, filters={"group": group} if group else {}))
    except (wandb.errors.Error, ValueError) as exc:
        raise NanolabError(f"W&B runs of {path!r}: {exc}") from None
