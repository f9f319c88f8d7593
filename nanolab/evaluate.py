"""`nanolab eval RUN_FOLDER --tasks ...`: a run's checkpoint scored by EleutherAI's lm-evaluation-harness (the `eval`
extra), through the Hugging Face export that `nanolab export --to hf` writes, with lm-eval's `hf` model and no
extra model_args. The only module that imports lm_eval.

nanolab ships one task, `nanolab_shakespeare` (nanolab/eval_tasks): the run's val split as one document scored by
rolling log-likelihood, giving bits_per_byte. Any other installed lm-eval task runs too, where its data can be had.

bits_per_byte against nanolab's val/bpc: both are -log2 p summed over the text, divided by its length, but lm-eval
divides by UTF-8 bytes and nanolab by characters (the same for ASCII text such as Tiny Shakespeare; a non-ASCII
character is 2-4 bytes, so lm-eval's figure is lower there). lm-eval cuts the text into non-overlapping windows of
the context and predicts every character, the first one after the BOS token (a newline); nanolab's val/loss_whole
(train.final_eval) cuts the same way and predicts all but the first; the training-time val/bpc is a mean over
`eval_iters` random windows, a sample of the same quantity.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from pathlib import Path
from types import ModuleType

from nanolab.config_dicts import to_dict
from nanolab.device import pick_device
from nanolab.errors import NanolabError
from nanolab.export import export_hf
from nanolab.runfolder import RunFolder, now
from nanolab.runner import resume_config
from nanolab.tracking import add_to_summary

TASKS_DIR = Path(__file__).parent / "eval_tasks"
LOCAL_TASK = "nanolab_shakespeare"


def import_lm_eval() -> ModuleType:
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError as exc:
        raise NanolabError(f"nanolab eval needs lm-eval, the `eval` extra: pip install 'nanolab[eval]' ({exc})") from None
    return lm_eval


def task_manager(lm_eval: ModuleType, data: dict, tasks: list[str]):
    """lm-eval's tasks and nanolab's, the local task reading the run's own data; an unknown name is one line."""
    own = {path.stem for path in TASKS_DIR.glob("*.yaml")}
    # lm-eval's own thousands of task files take a minute to index: only when a task asked for is one of them
    manager = lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR), include_defaults=not set(tasks) <= own,
                                        metadata={"data": data})
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise NanolabError(f"--tasks {task!r}: no such lm-eval task{hint}; nanolab's own: {LOCAL_TASK}; "
                               "`lm_eval ls tasks` lists the others")
    return manager


def figures(results: dict) -> dict[str, float]:
    """lm-eval's results as flat W&B-style keys: eval/<task>/<metric> (its filter, `none`, left out)."""
    out = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, _ = key.partition(",")
            if isinstance(value, (int, float)) and not key.startswith("alias") and "_stderr" not in metric:
                out[f"eval/{task}/{metric}"] = float(value)
    return out


def evaluate_run(run_dir: Path, tasks: list[str], which: str = "best", limit: float | None = None,
                 batch_size: int = 16) -> dict[str, float]:
    """Score the run's `which` checkpoint on `tasks`; the figures go to the run folder (eval.json) and to its W&B
    run. Returns them."""
    folder = RunFolder(run_dir)
    cfg = resume_config(folder.path)
    lm_eval = import_lm_eval()
    manager = task_manager(lm_eval, to_dict(cfg)["data"], tasks)
    with tempfile.TemporaryDirectory(prefix="nanolab-eval-") as tmp:
        export_hf(folder.path, Path(tmp) / "hf", which)
        results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={Path(tmp) / 'hf'}", tasks=tasks,
                                          task_manager=manager, batch_size=batch_size, limit=limit,
                                          device=str(pick_device("auto")),
                                          log_samples=False)
    scores = figures(results)
    record = {"time": now(), "checkpoint": which, "tasks": tasks, "limit": limit,
              "lm_eval": results.get("lm_eval_version") or lm_eval_version(), "figures": scores,
              "results": json.loads(json.dumps(results["results"], default=str))}
    folder.append_eval(record)
    add_to_summary(cfg, folder, scores)
    return scores


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")
