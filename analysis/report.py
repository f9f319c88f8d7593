"""Write a Markdown report of one ablation: what ran, the comparison table and the val-loss plot.

    python analysis/report.py experiments/ablations/activation.yaml [--runs runs/] [--out reports/activation]

The ablation must have run (`nanolab ablate FILE`); the report reads its run folders, nothing is trained.
"""

import argparse
import sys
from pathlib import Path

from nanolab.ablate import load_ablation
from nanolab.analysis import compare_command, load_runs
from nanolab.errors import NanolabError
from nanolab.runfolder import runs_root


def budget(runs) -> str:
    """One line on what every run trained: steps, tokens per step, model size."""
    first = runs.iloc[0]
    tokens = first["train.batch_size"] * first["train.grad_accum"] * first["data.block_size"]
    seeds = sorted(int(seed) for seed in runs["seed"].unique())
    return (f"{len(runs)} runs of {int(first['train.max_iters']):,} steps x {int(tokens):,} tokens "
            f"({int(first['params']):,} parameters for the first variant), seeds {seeds}")


def report(ablation_file: str, runs: Path, out: Path) -> Path:
    ablation = load_ablation(ablation_file)
    folder = runs / ablation.name
    by = list(ablation.cells[0].variant)
    table = compare_command([folder], group=ablation.name, by=by, markdown=str(out / "table.md"),
                            plot=str(out / "val_loss.png"), baseline=ablation.baseline)
    df = load_runs(folder, group=ablation.name)
    text = "\n".join([
        f"# Ablation: {ablation.name}",
        "",
        f"`{ablation_file}` over `{ablation.plan.experiment.name}`: {budget(df)}.",
        f"Wall time {df['wall_time'].sum() / 60:.1f} min in all.",
        "",
        (out / "table.md").read_text().strip(),
        "",
        "![val/loss against step, mean and min-max band over seeds](val_loss.png)",
        "",
    ])
    (out / "report.md").write_text(text)
    print(table)
    return out / "report.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation_file")
    parser.add_argument("--runs", type=Path, default=None, help="the runs root (default $NANOLAB_RUNS or ./runs)")
    parser.add_argument("--out", type=Path, default=None, help="the report folder (default reports/<name>)")
    args = parser.parse_args()
    try:
        name = load_ablation(args.ablation_file).name
        path = report(args.ablation_file, args.runs or runs_root(), args.out or Path("reports") / name)
    except NanolabError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
