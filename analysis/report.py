"""The Markdown report of an ablation or a sweep, through nanolab's Python API: `nanolab report FILE` does the same
for the runs under $NANOLAB_RUNS; this script also reads another runs root (a colleague's, a cluster's copy).

    python analysis/report.py experiments/ablations/activation.yaml [--runs runs/] [--out reports/activation]
"""

import argparse

from nanolab.analysis.report import write_report

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("plan_file", help="an ablation or sweep file that has run")
parser.add_argument("--runs", help="the runs root (default $NANOLAB_RUNS, else ./runs)")
parser.add_argument("--out", help="the report's folder (default reports/<name>)")
args = parser.parse_args()
print(f"wrote {write_report(args.plan_file, args.out, args.runs)}")
