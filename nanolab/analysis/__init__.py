"""Run folders and W&B runs -> pandas; comparison tables (paired or Welch t-tests, corrected p-values); plots.

    runs = load_runs("runs/", group="activation")      # one row per run, config flattened with dots
    table = compare(runs, by=varying_keys(runs))       # one row per variant, best first
    print(format_table(table))
    history = load_history(runs)                       # every logged step of those runs
    at = metric_at(history, "flops", 1e12)             # each run's val/loss at equal compute

Runs from the local run folders (`load_runs`, `load_history`) and from W&B (`load_wandb_runs`,
`load_wandb_history`) give frames with the same columns, so everything below works on either.

    load.py        run folders -> frames; each run's value at equal compute
    wandb_runs.py  W&B public API -> the same frames
    stats.py       compare: paired or Welch t-tests, corrected p-values, effect sizes (d_z, Hedges' g), the baseline
    render.py      text and Markdown tables, plots, files
    findings.py    a sentence per comparison, written from a compare table's numbers
    published.py   runs.csv: the per-run values a report is made from; `nanolab report --check`
    command.py     `nanolab compare`: load -> compare -> render (an ablation's keys and baseline from its plan.json)
"""

from nanolab.analysis.command import compare_command
from nanolab.analysis.load import BASE_COLUMNS, HISTORY_COLUMNS, load_history, load_runs, metric_at
from nanolab.analysis.render import caption, format_table, plot_history, to_markdown
from nanolab.analysis.stats import compare, varying_keys
from nanolab.analysis.wandb_runs import load_wandb_history, load_wandb_runs

__all__ = ["load_runs", "load_history", "load_wandb_runs", "load_wandb_history", "metric_at", "compare",
           "varying_keys", "format_table", "to_markdown", "caption", "plot_history", "compare_command", "BASE_COLUMNS",
           "HISTORY_COLUMNS"]
