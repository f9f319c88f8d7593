"""Shared test setup: every test runs offline, against temporary directories.

The autouse session fixture `nanolab_env` sets, for the whole session:

- `NANOLAB_CACHE`: a temporary cache pre-seeded with a copy of Tiny Shakespeare at
  `<cache>/tinyshakespeare/input.txt`, so no test downloads. The copy comes from `$NANOLAB_TEST_SHAKESPEARE` if
  set, else from the repository's sibling `../shared/data/tinyshakespeare/`, else it is downloaded once, verified
  like `nanolab run` does, into `$NANOLAB_CACHE` (offline: the session stops with one line naming the variable).
- `NANOLAB_RUNS`: a temporary root for run and sweep folders.
- no `WANDB_MODE` or `WANDB_API_KEY` from the caller's shell, and `WANDB_SILENT=true`: each test's spec says
  which W&B mode it wants (`disabled` for most, `offline` where W&B files are read back); never online.

Tests that need a different cache (e.g. an empty one) override the variables with `monkeypatch`.

`small_tmpfs` is a 3 MB tmpfs for the tests of a really full disk (skipped where it cannot be mounted).
`one_thread` (module scope) runs a module's tiny models on one intra-op thread: a module that wants it says
`pytestmark = pytest.mark.usefixtures("one_thread")`. `slurm` (session scope, from slurm_cluster.py) is a running
single-node Slurm cluster.

Helpers that several modules share are in helpers.py; no test module imports another.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import shared_shakespeare
from slurm_cluster import slurm  # noqa: F401 - the session fixture, for every module


def corpus() -> Path:
    """The local copy, else the user's cached (or freshly downloaded and verified) one; offline, one line."""
    if shared_shakespeare().is_file():
        return shared_shakespeare()
    from nanolab.data.download import tiny_shakespeare
    from nanolab.errors import NanolabError

    try:
        return tiny_shakespeare()
    except NanolabError as exc:
        pytest.exit(f"Tiny Shakespeare is not at {shared_shakespeare()} and could not be downloaded ({exc}); set "
                    "NANOLAB_TEST_SHAKESPEARE to a copy", returncode=4)


@pytest.fixture(scope="session", autouse=True)
def nanolab_env(tmp_path_factory):
    """Point nanolab's cache and run folders at temporary directories and keep W&B off the network."""
    source = corpus()
    cache = tmp_path_factory.mktemp("cache")
    (cache / "tinyshakespeare").mkdir()
    shutil.copyfile(source, cache / "tinyshakespeare/input.txt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLAB_CACHE", str(cache))
        mp.setenv("NANOLAB_RUNS", str(tmp_path_factory.mktemp("runs")))
        mp.delenv("WANDB_MODE", raising=False)
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.setenv("WANDB_SILENT", "true")
        yield


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs at tmp_path/full (root only; skipped with the reason where it cannot be mounted)."""
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one intra-op thread, above all on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- markers (registered in pyproject.toml)

MODULE_MARKS = {  # every test of the module
    "test_slurm.py": ("slurm", "slow"), "test_slurm_cluster.py": ("slurm", "slow"),
    "test_sequential_slurm.py": ("slurm", "slow"),
    "test_sweep_postgres.py": ("postgres", "slow"), "test_distributed.py": ("ddp", "slow"),
}
FIXTURE_MARKS = {"small_tmpfs": "root", "slurm": "slurm"}
NAME_MARKS = {"two_ranks": "ddp", "ddp_run": "ddp", "postgres": "postgres"}  # a word in the test's name
# Tests over ~3 s in a full run on a loaded machine (about 1 s idle; module, or module::test prefix):
# `python -m pytest --durations=0` lists them; a new slow test belongs here
SLOW = (
    "test_export.py", "test_fuzz.py", "test_gpu_check.py", "test_interop.py", "test_plan.py", "test_plan_faults.py",
    "test_report.py", "test_runner.py", "test_scale.py", "test_scale_report.py", "test_sequential_tuned.py",
    "test_sweep_faults.py", "test_tuned.py",
    "test_ablate.py::test_cli_ablate_then_compare",
    "test_faults.py::test_a_best_checkpoint_the_full_disk_refused", "test_faults.py::test_a_device_this_machine_lacks",
    "test_faults.py::test_a_full_disk_fails_the_run", "test_faults.py::test_a_model_whose_step_cannot_fit",
    "test_faults.py::test_a_real_full_disk", "test_faults.py::test_float16_on_the_cpu",
    "test_faults.py::test_resume_after_the_config_changed_shape",
    "test_fuzz_surfaces.py",
    "test_results.py::test_each_published_report_regenerates", "test_results.py::test_the_results_quote",
    "test_launcher.py::test_a_crashed_task_is_recorded", "test_launcher.py::test_a_dead_worker_is_replaced",
    "test_launcher.py::test_workers_die_with_their_parent", "test_launcher.py::test_workers_get_one_gpu_each",
    "test_sequential.py::test_a_decided_variant_gets_no_more_seeds", "test_sequential.py::test_kill_9_between_rounds",
    "test_sequential.py::test_rounds_run_to_the_last_look",
    "test_speedrun_parts.py::test_whole_split_loss_under_two_ranks",
    "test_surfaces.py::test_a_budget_is_bounded", "test_surfaces.py::test_a_killed_exports_hidden_copy",
    "test_surfaces.py::test_a_streamed_sample", "test_surfaces.py::test_a_tiny_temperature",
    "test_surfaces.py::test_export_", "test_surfaces.py::test_sample_tokens_are_bounded",
    "test_sweep.py::test_a_seeded_grid", "test_sweep.py::test_second_call_continues",
    "test_sweep.py::test_study_writes_results", "test_sweep.py::test_trial_of_a_dead_worker",
    "test_sweep.py::test_two_workers_share",
    "test_tracking.py::test_auto_mode_falls_back", "test_tracking.py::test_online_unreachable_server",
    "test_tracking.py::test_resume_after_hard_kill", "test_tracking.py::test_sync_gives_up",
    # the edit loop's slowest after the list above (over ~1.2 s idle: mostly `python -m nanolab` children)
    "test_docs.py", "test_ablate.py::test_two_variants_two_seeds_make_four_runs_then_nothing_new",
    "test_analysis.py::test_compare_named_baseline_confidence_and_direction",
    "test_analysis.py::test_compare_takes_an_ablations_baseline_from_its_file_or_its_group",
    "test_analysis.py::test_runs_from_before_the_counters_get_tokens_and_flops_derived_but_not_wall",
    "test_bpe.py::test_training_is_deterministic_across_processes",
    "test_cli.py::test_components_lists_every_registered_name_with_its_description",
    "test_cli.py::test_user_errors_are_one_line_and_exit_2",
    "test_coordcheck.py::test_activations_are_flat_across_width_under_mup_and_grow_under_standard",
    "test_datacache.py::test_a_killed_preparation_leaves_no_entry_and_the_next_one_makes_it_whole",
    "test_datacache.py::test_two_preparations_at_once_make_one_entry_that_both_use",
    "test_results.py::test_the_results_quote_generated_findings_verbatim",
    "test_sequential.py::test_a_bad_sequential_file_is_one_line_naming_the_key",
    "test_sequential.py::test_decisions_equal_holm_over_the_repeated_p_values",
    "test_sequential.py::test_the_seeds_flag_is_refused", "test_spec.py::test_cli_prints_one_line_and_exits_2",
    "test_speedrun_parts.py::test_a_run_with_every_part_resumes_identically_and_ends_with_the_whole_val_loss",
    "test_surfaces.py::test_a_spec_given_to_a_plan_verb_is_named_a_spec",
    "test_surfaces.py::test_a_sweep_timeout_is_a_positive_number_of_seconds",
    "test_surfaces.py::test_a_yaml_alias_bomb_is_named_in_a_short_line",
    "test_surfaces.py::test_an_ablation_without_its_experiment_is_one_line",
    "test_surfaces.py::test_an_empty_file_is_one_line", "test_surfaces.py::test_slurm_without_slurm_is_one_line",
    "test_sweep.py::test_bad_sweep_file_from_the_command_line_has_no_traceback",
    "test_tracking.py::test_each_evaluation_sample_is_logged_once",
    "test_tracking.py::test_resumed_run_keeps_wandb_id_and_skips_steps_wandb_holds",
    "test_tracking.py::test_tiny_run_reads_back_from_wandb", "test_tracking.py::test_wandb_offline_run_reads_back",
    "test_tracking.py::test_wandb_run_names_its_study_trial_or_ablation_variant",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        marks = set(MODULE_MARKS.get(module, ()))
        marks |= {mark for fixture, mark in FIXTURE_MARKS.items() if fixture in item.fixturenames}
        marks |= {mark for word, mark in NAME_MARKS.items() if word in item.name}
        if marks & {"slurm", "postgres", "ddp"} or f"{module}::{item.name}".startswith(SLOW) or module in SLOW:
            marks.add("slow")
        for mark in sorted(marks):
            item.add_marker(mark)
