"""Run folders and W&B runs -> pandas; comparison tables with Welch confidence intervals; loss plots.

    runs = load_runs("runs/", group="activation")      # one row per run, config flattened with dots
    table = compare(runs, by=varying_keys(runs))       # one row per variant, best first
    print(format_table(table))
    history = load_history(runs)                       # every logged step of those runs

Runs from the local run folders (`load_runs`, `load_history`) and from W&B (`load_wandb_runs`,
`load_wandb_history`) give frames with the same columns, so everything below works on either.

    load.py        run folders -> frames          wandb_runs.py  W&B public API -> the same frames
    stats.py       compare, Welch, baseline       render.py      text and Markdown tables, plots, files
    command.py     `nanolab compare`: load -> compare -> render
"""

from nanolab.analysis.command import compare_command
from nanolab.analysis.load import BASE_COLUMNS, HISTORY_COLUMNS, load_history, load_runs
from nanolab.analysis.render import format_table, plot_history, to_markdown
from nanolab.analysis.stats import compare, varying_keys
from nanolab.analysis.wandb_runs import load_wandb_history, load_wandb_runs

__all__ = ["load_runs", "load_history", "load_wandb_runs", "load_wandb_history", "compare", "varying_keys",
           "format_table", "to_markdown", "plot_history", "compare_command", "BASE_COLUMNS", "HISTORY_COLUMNS"]
