"""A plan is one resolved snapshot: an edit to the experiment while an ablation runs changes none of its cells, a
rerun after the edit stops in one line, and run ids come from the cells, never from what a value spells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_yaml

from nanolab.ablate import ablate, load_ablation
from nanolab.analysis.report import write_report
from nanolab.cli import main
from nanolab.runfolder import RunStore, variant_ids

TWO_CELLS = """\
name: edit
experiment: tiny.yaml
overrides: {train.max_iters: 300, train.eval_interval: 300, train.log_interval: 100}
grid: {model.activation: [relu, gelu]}
seeds: [1]
"""


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())


def config(name: str, run_id: str) -> dict:
    return RunStore().folder(name, run_id).read_config()


def test_an_edit_between_two_cells_changes_neither_and_the_rerun_names_the_changed_key(tmp_path, capsys):
    path = tmp_path / "edit.yaml"
    path.write_text(TWO_CELLS)
    child = subprocess.Popen([sys.executable, "-m", "nanolab", "ablate", str(path), "--workers", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    seen = []
    for line in child.stdout:  # the edit lands while the first cell trains, before the second is proposed
        seen.append(line)
        if line.startswith("activation=relu-s1: started"):
            (tmp_path / "tiny.yaml").write_text(tiny_yaml(model={"n_embd": 32}))
            break
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert not any("activation=gelu-s1: started" in line for line in seen)
    assert config("edit", "activation=relu-s1")["model"]["n_embd"] == 16
    assert config("edit", "activation=gelu-s1")["model"]["n_embd"] == 16  # the snapshot's, not the edited file's

    assert main(["ablate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "experiment.model.n_embd: 16 -> 32" in err and "another `name:`" in err
    path.write_text(TWO_CELLS.replace("name: edit", "name: edit-wide"))  # a new plan, on purpose
    assert main(["ablate", str(path), "--set", "train.max_iters=10", "train.eval_interval=10"]) == 0
    assert config("edit-wide", "activation=gelu-s1")["model"]["n_embd"] == 32


def test_more_seeds_extend_the_same_plan(tmp_path):
    path = tmp_path / "edit.yaml"
    path.write_text(TWO_CELLS.replace("max_iters: 300", "max_iters: 10").replace("eval_interval: 300",
                                                                                "eval_interval: 10"))
    _, first = ablate(path)
    _, second = ablate(path, seeds=[1, 2])
    assert sorted(first) == ["activation=gelu-s1", "activation=relu-s1"]
    assert sorted(second) == ["activation=gelu-s2", "activation=relu-s2"]
    stamps = {json.loads((p / "meta.json").read_text())["plan_fingerprint"]
              for p in (tmp_path / "runs/edit").iterdir() if p.is_dir()}
    assert stamps == {load_ablation(path).fingerprint}


def test_path_valued_cells_get_distinct_safe_ids_and_rerun_as_done(tmp_path, capsys):
    corpus = (Path(os.environ["NANOLAB_CACHE"]) / "tinyshakespeare/input.txt").read_text()[:60_000]
    for sub in ("c1", "c2"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "corpus.txt").write_text(corpus[::-1] if sub == "c2" else corpus)
    path = tmp_path / "corpora.yaml"
    path.write_text("experiment: tiny.yaml\noverrides: {train.max_iters: 10, train.eval_interval: 10}\n"
                    "grid: {data.path: [c1/corpus.txt, c2/corpus.txt, ../../x/corpus.txt]}\nseeds: [1]\n")
    cells = load_ablation(path).cells
    ids = [cell.run_id for cell in cells]
    assert len(set(ids)) == 3 and all("/" not in i and ".." not in i for i in ids)
    assert [cell.label for cell in cells] == ["path=c1/corpus.txt", "path=c2/corpus.txt", "path=../../x/corpus.txt"]
    assert cells[0].variant == {"data.path": str((tmp_path / "c1/corpus.txt").resolve())}
    path.write_text(path.read_text().replace(", ../../x/corpus.txt", ""))
    ablation, results = ablate(path)
    assert set(results.values()) == {"finished"} and len(results) == 2
    for cell in ablation.cells:
        meta = json.loads((ablation.folder(cell).path / "meta.json").read_text())
        assert meta["label"] == cell.label and meta["variant"] == cell.variant
        assert config("corpora", cell.run_id)["data"]["path"] == cell.variant["data.path"]
    capsys.readouterr()
    assert ablate(path)[1] == {}
    assert "2 runs, 2 already done, 0 to run" in capsys.readouterr().out
    assert main(["status", str(path)]) == 0
    table = capsys.readouterr().out
    assert table.count("finished") == 2 and "not started" not in table


def test_the_report_reads_what_the_plan_recorded_not_the_files_again(tmp_path):
    path = tmp_path / "edit.yaml"
    path.write_text(TWO_CELLS.replace("max_iters: 300", "max_iters: 10").replace("eval_interval: 300",
                                                                                "eval_interval: 10"))
    ablate(path)
    (tmp_path / "tiny.yaml").unlink()  # the experiment is gone; the plan's record and run folders remain
    text = write_report(path, tmp_path / "report").read_text()
    assert "- grid: model.activation in ['relu', 'gelu']\n" in text
    assert f"over the experiment `{tmp_path / 'tiny.yaml'}`" in text


def test_values_that_print_alike_or_could_name_a_folder_elsewhere_get_hashed_ids():
    labels = {'{"train.lr": 1}': "lr=1", '{"train.lr": "1"}': "lr=1", '{"train.lr": 2}': "lr=2",
              '{"data.path": "../x"}': "path=../x", '{"data.path": "a/b"}': "path=a/b"}
    ids = variant_ids(labels)
    assert ids['{"train.lr": 2}'] == "lr=2"
    assert len(set(ids.values())) == 5 and all(v.startswith("v-") for k, v in ids.items() if k != '{"train.lr": 2}')
    assert variant_ids(labels) == ids  # the same cells, the same folders, on every call


def test_set_on_a_key_the_ablation_varies_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "edit.yaml"
    path.write_text(TWO_CELLS)
    assert main(["ablate", str(path), "--set", "model.activation=swiglu"]) == 2
    assert capsys.readouterr().err == (f"nanolab: error: --set model.activation=swiglu: model.activation is varied by "
                                       f"`grid:` in {path}; set it in one place (remove it from --set, or from the "
                                       "file)\n")
    assert not (tmp_path / "runs").exists()
