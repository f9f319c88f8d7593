"""benchmarks/gpu_check.py --dry-run: every part's plumbing on the CPU (tiny models, 2 steps), and the JSON's shape.

The real check needs a GPU (one H100 / H200, ~8 minutes); this test makes sure the script, as it is, builds every
config and reaches the end of every part, so that the GPU's minutes are not spent on a typo.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
PARTS = ["train", "steps", "gpt2", "sweep", "generate", "seed"]
NM = "not measured"
TIMINGS = {  # per part: the fields that a dry run must mark as not measured
    "train": ["tokens_per_sec", "step_ms", "mfu", "wall_s", "seconds"],
    "steps": ["seconds"],
    "gpt2": ["step_ms", "tokens_per_sec", "peak_memory_GiB", "mfu", "wall_s", "seconds"],
    "sweep": ["overlap_s", "wall_s", "seconds"],
    "generate": ["cached_tokens_per_sec", "uncached_tokens_per_sec", "speedup", "seconds"],
    "seed": ["wall_s", "wall_s_all_steps", "speedup_vs_t4", "seconds"],
}


def finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_dry_run_reports_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--device", "cpu", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "gpu_check --dry-run" in proc.stdout and f"wrote {out}" in proc.stdout

    figures = json.loads(out.read_text())
    assert figures["benchmark"] == "gpu_check" and figures["dry_run"] is True
    assert figures["wall_s"] == NM and figures["peak_flops"] == NM and figures["machine"]["device"] == "cpu"
    assert list(figures["parts"]) == PARTS
    for name, part in figures["parts"].items():
        assert part["status"] == "ok" or re.fullmatch(r"skipped: .{10,}", part["status"]), (name, part["status"])
        if part["status"] == "ok":
            assert {key: part[key] for key in TIMINGS[name]} == dict.fromkeys(TIMINGS[name], NM), name

    parts = figures["parts"]
    train = parts["train"]
    assert train["steps"] == 2 and finite(train["val_loss"]) and train["val_loss_step"] == 2
    assert (train["nanogpt_val_loss"], train["nanogpt_step"]) == (1.47, 5000) and "not comparable" in train["note"]

    rows = parts["steps"]["rows"]
    assert [r["case"] for r in rows] == ["eager", "compiled", "naive", "sdpa", "naive", "sdpa"]
    assert all(r[k] == NM for r in rows for k in ("ms", "tokens_per_sec", "mfu", "peak_MB"))
    assert [r["speedup"] for r in rows if "speedup" in r] == [NM] * 3

    assert parts["gpt2"]["steps"] == 2 and parts["gpt2"]["params"] > 0

    sweep = parts["sweep"]
    assert sweep["workers"] == 2 and sweep["exit_status"] == 1
    assert sorted(t["state"] for t in sweep["trials"]) == ["COMPLETE", "FAIL"]
    assert len({t["worker"] for t in sweep["trials"]}) == 2  # one trial per worker process
    failed = next(t for t in sweep["trials"] if t["state"] == "FAIL")
    assert failed["fail_reason"].startswith("NanolabError:") and "memory check" in sweep["failure"]

    generate = parts["generate"]
    assert generate["new_tokens"] == generate["block_size"] - generate["prompt"] > 0
    assert isinstance(generate["same_tokens"], bool)

    seed = parts["seed"]
    assert seed["steps"] == seed["max_iters"] == 2 and seed["finished"] is True and finite(seed["val_loss"])
    assert seed["t4_reference_s"] == 900
