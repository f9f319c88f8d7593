"""`nanolab export --to hf`: every exportable architecture, loaded back by transformers from the files, computes
nanolab's logits and greedy tokens; its tokenizer has nanolab's ids; a component with no exact equivalent, a missing
checkpoint, a non-empty OUT_DIR and a missing transformers are each one line and exit status 2, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import gpt2_prepare, nan_at, shared_shakespeare
from transformers import AutoModelForCausalLM, AutoTokenizer

from nanolab import load_spec, registry, run
from nanolab.cli import main
from nanolab.components.attention import SDPAttention
from nanolab.data import tokenizer_from_dict
from nanolab.runfolder import RunFolder
from nanolab.runner import load_trained
from nanolab.vocab import EXIT_OK, EXIT_USAGE

SPEC = """\
seed: 7
data: {block_size: 32}
model: {n_layer: 2, n_head: 2, n_embd: 32}
train: {batch_size: 16, max_iters: 150, lr: 1.0e-2, warmup_iters: 10, eval_interval: 50, eval_iters: 1,
        log_interval: 50, sample_tokens: 0}
tracking: {wandb: {mode: disabled}}
"""
LLAMA = ["model.position=rotary", "model.norm=rmsnorm"]
CASES = {  # name -> (overrides of SPEC, with {spec_folder}; the transformers class it becomes)
    "gpt2-gelu-tied": (["model.activation=gelu"], "GPT2LMHeadModel"),
    "gpt2-relu-untied-bias": (["model.activation=relu", "model.tie_weights=false", "model.bias=true"],
                              "GPT2LMHeadModel"),
    "gpt2-relu2-sinusoidal": (["model.activation=relu2", "model.position=sinusoidal"], "GPT2LMHeadModel"),
    "gpt2-nope-untied-naive": (["model.position=none", "model.tie_weights=false", "model.attention=naive"],
                               "GPT2LMHeadModel"),
    "gpt2-bpe": (["data.path={spec_folder}/excerpt.txt", "data.tokenizer=bpe", "data.vocab_size=300"], "GPT2LMHeadModel"),
    "llama-swiglu-tied": ([*LLAMA, "model.activation=swiglu"], "LlamaForCausalLM"),
    "llama-swiglu-untied-bias-theta": ([*LLAMA, "model.activation=swiglu", "model.tie_weights=false", "model.bias=true",
                                        "model.rope_base=500"], "LlamaForCausalLM"),
    "llama-geglu-tied": ([*LLAMA, "model.activation=geglu"], "LlamaForCausalLM"),
}
PROMPT, NEW_TOKENS = "ROMEO:", 26  # 6 characters + 26 fill the 32-token context: no window slides
EXPORTABLE = ("GPT2LMHeadModel (position learned|sinusoidal|none, norm layernorm, activation gelu|relu|relu2) or "
              "LlamaForCausalLM (position rotary, norm rmsnorm, activation swiglu|geglu), with norm_placement pre, "
              "qk_norm false, logit_softcap null, value_embeds 0, parametrization standard (or mup at its base width) and "
              "attention naive|sdpa")


def export(run_dir: Path, out: Path, *flags: str) -> int:
    return main(["export", str(run_dir), "--to", "hf", str(out), *flags])


@pytest.fixture(scope="module")
def corpus() -> str:
    return shared_shakespeare().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def spec(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("spec")
    (folder / "excerpt.txt").write_text(corpus[:100_000], encoding="utf-8")
    (folder / "tiny.yaml").write_text(SPEC)
    return folder / "tiny.yaml"


@pytest.fixture(scope="module")
def exported(spec, tmp_path_factory) -> Callable[[str], tuple[Path, Path]]:
    """case -> (its run folder, its export), each trained and exported once, on first use."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(case: str) -> tuple[Path, Path]:
        if case not in made:
            overrides = [override.format(spec_folder=spec.parent) for override in CASES[case][0]]
            result = run(load_spec(spec, [f"name={case}", *overrides]), show_progress=False)
            out = tmp_path_factory.mktemp("hf") / case
            assert export(result.run_dir, out) == EXIT_OK
            made[case] = result.run_dir, out
        return made[case]

    return get


def nanolab_sample(run_dir: Path, prompt: str, capsys) -> str:
    """What `nanolab sample --top-k 1` prints: greedy, whatever the temperature."""
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", prompt, "--tokens", str(NEW_TOKENS), "--top-k", "1"]) == EXIT_OK
    return capsys.readouterr().out


@pytest.mark.parametrize("case", CASES)
def test_the_exported_model_computes_nanolabs_logits(case, exported, corpus):
    run_dir, out = exported(case)
    written = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= written
    assert not [name for name in written if name.endswith((".bin", ".pt", ".pth"))]  # weights in safetensors only
    mode = lambda name: (out / name).stat().st_mode & 0o777
    assert mode("model.safetensors") == mode("config.json")  # transformers writes the weights 0600
    model, tokenizer, _ = load_trained(run_dir, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(out)  # from the files, not from anything in memory
    assert type(hf).__name__ == CASES[case][1]
    tied = hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    assert tied == model.cfg.tie_weights
    if CASES[case][1] == "LlamaForCausalLM":  # where transformers 4 reads it; 5 reads rope_parameters
        assert json.loads((out / "config.json").read_text())["rope_theta"] == model.cfg.rope_base
    idx = torch.tensor([tokenizer.encode(corpus[start:start + 200])[:32] for start in (0, 10_000, 500_000)])
    with torch.no_grad():
        expected, logits = model(idx), hf(idx).logits
    assert (logits - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_equals_nanolab_sample_top_k_1(case, exported, capsys):
    run_dir, out = exported(case)
    expected = nanolab_sample(run_dir, PROMPT, capsys)
    tokenizer, hf = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}  # GPT-2 adds wte(token_type_ids) to its inputs
    ids = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=[])  # past line ends
    assert tokenizer.decode(ids[0]) + "\n" == expected


@pytest.mark.parametrize("case", ["gpt2-gelu-tied", "gpt2-bpe"])
def test_the_tokenizer_has_nanolabs_ids_and_round_trips_the_whole_corpus(case, exported, corpus):
    run_dir, out = exported(case)
    tokenizer = tokenizer_from_dict(RunFolder(run_dir).read_tokenizer())
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    ids = hf_tokenizer(corpus)["input_ids"]
    assert ids == tokenizer.encode(corpus)
    assert hf_tokenizer.decode(ids) == corpus
    assert len(hf_tokenizer) == tokenizer.vocab_size
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4 cannot load 5's TokenizersBackend
    spaced = "  What , ho !\n\n\nI ' the name 's sake ?  "  # spaces before punctuation: no clean-up may eat them
    assert hf_tokenizer.decode(hf_tokenizer(spaced)["input_ids"]) == spaced


def test_the_export_loads_and_generates_without_nanolab(exported, capsys):
    outs, expected = [], []
    for case in ("gpt2-gelu-tied", "llama-swiglu-tied"):
        run_dir, out = exported(case)
        outs.append(str(out))
        expected.append(repr(nanolab_sample(run_dir, PROMPT, capsys)[:-1]))
    code = ("import sys\n"
            "sys.modules['nanolab'] = None  # any import of nanolab fails\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "for out in sys.argv[1:]:\n"
            "    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)\n"
            f"    ids = model.generate(**tokenizer({PROMPT!r}, return_tensors='pt'), max_new_tokens={NEW_TOKENS}, "
            "do_sample=False, eos_token_id=[])\n"
            "    print(repr(tokenizer.decode(ids[0])))\n")
    proc = subprocess.run([sys.executable, "-c", code, *outs], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected


def test_a_run_on_token_ids_exports_its_model_without_a_tokenizer(spec, tmp_path, corpus, capsys):
    """nanoGPT's GPT-2 .bin files without a meta file: ids with no text tokenizer to export; the model still is."""
    gpt2_prepare(tmp_path / "bins", corpus[:20_000])
    result = run(load_spec(spec, ["name=ids", f"data.path={tmp_path / 'bins'}", "data.vocab_size=576"]),
                 show_progress=False)
    out = tmp_path / "hf"
    with pytest.warns(UserWarning) as warned:
        assert export(result.run_dir, out) == EXIT_OK
    assert [str(w.message) for w in warned] == ["wrote no tokenizer: the run's tokenizer 'ids' has no text form to "
                                                "export (char and bpe have); the model reads token ids below 576"]
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "model.safetensors", "README.md"}
    assert "## Special tokens\n\nNone: the run's tokens are ids without text" in (out / "README.md").read_text()
    prompt = "464 206 7"
    expected = nanolab_sample(result.run_dir, prompt, capsys)
    hf = AutoModelForCausalLM.from_pretrained(out)
    ids = hf.generate(torch.tensor([[int(i) for i in prompt.split()]]), max_new_tokens=NEW_TOKENS, do_sample=False)
    assert " ".join(map(str, ids[0].tolist())) + "\n" == expected


class SharpAttention(SDPAttention):
    """softmax(2 q k^T / sqrt(hs)) v: another package's kernel, which no Hugging Face architecture computes."""

    def forward(self, q, k, v, bias=None):
        return super().forward(2 * q, k, v, bias)


REFUSED = {  # the key and value that the message names -> the overrides that train such a run
    "model.position = 'alibi'": ["model.position=alibi"],
    "model.norm_placement = 'post'": [*LLAMA, "model.activation=swiglu", "model.norm_placement=post"],
    "model.qk_norm = True": ["model.qk_norm=true"],
    "model.logit_softcap = 30.0": ["model.logit_softcap=30"],
    "model.value_embeds = 1": ["model.value_embeds=1"],
    "model.parametrization = 'mup'": ["model.parametrization=mup", "model.mup_base_width=8"],
    "model.attention = 'sharp'": ["model.attention=sharp"],
    "model.norm = 'rmsnorm' beside position 'learned'": ["model.norm=rmsnorm"],
    "model.norm = 'layernorm' beside position 'rotary'": ["model.position=rotary", "model.activation=swiglu"],
    "model.norm = 'rmsnorm' beside position 'sinusoidal'": ["model.position=sinusoidal", "model.norm=rmsnorm"],
    "model.activation = 'swiglu' beside position 'learned'": ["model.activation=swiglu"],
    "model.activation = 'geglu' beside position 'none'": ["model.position=none", "model.activation=geglu"],
    "model.activation = 'gelu' beside position 'rotary'": [*LLAMA, "model.activation=gelu"],
    "model.activation = 'relu' beside position 'rotary'": [*LLAMA, "model.activation=relu"],
    "model.activation = 'relu2' beside position 'rotary'": [*LLAMA, "model.activation=relu2"],
}


@pytest.mark.parametrize("named", REFUSED)
def test_a_component_without_an_exact_equivalent_is_refused(named, spec, tmp_path, monkeypatch, capsys):
    registry.kinds()  # the built-ins, then a copy of the registry that another package's kernel joins
    monkeypatch.setattr(registry, "_entries", {kind: dict(names) for kind, names in registry._entries.items()})
    registry.register("attention", "sharp")(SharpAttention)
    result = run(load_spec(spec, ["name=refused", "model.n_layer=1", "train.max_iters=1", *REFUSED[named]]),
                 show_progress=False)
    out = tmp_path / "hf"
    assert export(result.run_dir, out) == EXIT_USAGE
    assert capsys.readouterr().err == (f"nanolab: error: {result.run_dir / 'config.yaml'}: {named}: no Hugging Face "
                                       f"architecture computes it exactly, so it is not exported; exportable: "
                                       f"{EXPORTABLE}\n")
    assert not out.exists()


def test_checkpoint_best_or_last_chooses_the_file(spec, tmp_path, monkeypatch, capsys):
    """A run that diverged at step 35 keeps best.pt of its evaluation at step 20 and last.pt of step 30."""
    nan_at(monkeypatch, 35)
    result = run(load_spec(spec, ["name=diverged", "train.max_iters=40", "train.eval_interval=20",
                                  "train.checkpoint_interval=10"]), show_progress=False)
    monkeypatch.undo()
    assert result.status == "diverged"
    folder, embeddings = RunFolder(result.run_dir), {}
    for which, flags in (("best", []), ("last", ["--checkpoint", "last"])):  # best is the default
        assert export(result.run_dir, tmp_path / which, *flags) == EXIT_OK
        assert capsys.readouterr().out == (f"exported {result.run_dir}/ckpt/{which}.pt as GPT2LMHeadModel to "
                                           f"{tmp_path / which}\n")
        checkpoint = folder.load_checkpoint(which)
        embeddings[which] = AutoModelForCausalLM.from_pretrained(tmp_path / which).get_input_embeddings().weight
        assert torch.equal(embeddings[which], checkpoint["model"]["wte.weight"])
        assert checkpoint["state"]["step"] == {"best": 20, "last": 30}[which]
    assert not torch.equal(embeddings["best"], embeddings["last"])


def test_a_run_without_the_checkpoint_asked_for_is_refused(exported, tmp_path, capsys):
    run_dir, _ = exported("gpt2-gelu-tied")
    copy, out = tmp_path / "run", tmp_path / "hf"
    shutil.copytree(run_dir, copy)
    (copy / "ckpt" / "best.pt").unlink()  # as a run stopped before its first evaluation
    assert export(copy, out) == EXIT_USAGE
    assert capsys.readouterr().err == (f"nanolab: error: {copy}/ckpt/best.pt: the run has no best checkpoint; "
                                       "--checkpoint last exports what it saved\n")
    (copy / "ckpt" / "last.pt").unlink()
    assert export(copy, out, "--checkpoint", "last") == EXIT_USAGE
    assert capsys.readouterr().err == (f"nanolab: error: {copy}/ckpt/last.pt: the run has no last checkpoint; "
                                       "it saved no checkpoint\n")
    assert not out.exists()


def test_out_dir_is_new_or_empty_and_never_overwritten(exported, tmp_path, capsys):
    run_dir, _ = exported("gpt2-gelu-tied")
    full, a_file, empty = tmp_path / "full", tmp_path / "file", tmp_path / "empty"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    a_file.write_text("mine")
    assert export(run_dir, full) == EXIT_USAGE
    assert capsys.readouterr().err == (f"nanolab: error: {full}: folder is not empty; an export never overwrites: "
                                       "give a new or empty folder\n")
    assert [p.name for p in full.iterdir()] == ["notes.txt"] and (full / "notes.txt").read_text() == "mine"
    assert export(run_dir, a_file) == EXIT_USAGE
    assert capsys.readouterr().err == f"nanolab: error: {a_file}: exists and is not a folder; give a new or empty folder\n"
    assert a_file.read_text() == "mine"
    empty.mkdir()
    assert export(run_dir, empty) == EXIT_OK
    assert (empty / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_without_transformers_the_export_names_the_extra(exported, tmp_path):
    """nanolab imports transformers only to export: the CLI gets as far as the export without it."""
    run_dir, _ = exported("gpt2-gelu-tied")
    out = tmp_path / "hf"
    code = "import sys; sys.modules['transformers'] = None; from nanolab.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "export", str(run_dir), "--to", "hf", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == EXIT_USAGE
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(
        "nanolab: error: nanolab export --to hf needs transformers, the `hf` extra: pip install 'nanolab[hf]' ("), \
        proc.stderr
    assert not out.exists()


def test_export_help_names_its_arguments():
    proc = subprocess.run([sys.executable, "-m", "nanolab", "export", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("RUN_FOLDER", "OUT_DIR", "--to", "--checkpoint", "GPT2LMHeadModel", "LlamaForCausalLM",
                 "nanolab[hf]"):
        assert word in proc.stdout, word


@pytest.mark.parametrize("case", ["gpt2-gelu-tied", "llama-swiglu-tied"])
def test_the_default_pipeline_generates_within_the_context(case, exported):
    from transformers import pipeline

    run_dir, out = exported(case)
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == 32
    pipe = pipeline("text-generation", model=str(out))  # every default: sampling, EOS, max_length
    assert pipe("ROMEO:")[0]["generated_text"].startswith("ROMEO:")
    ids = pipe("ROMEO:", eos_token_id=[], return_tensors=True)[0]["generated_token_ids"]
    assert len(ids) == 32  # up to the context and no further (GPT-2's wpe has 32 rows)


@pytest.mark.parametrize("case", ["gpt2-gelu-tied", "llama-swiglu-tied"])
def test_a_padded_batch_generates_what_each_prompt_does_alone(case, exported):
    _, out = exported(case)
    tokenizer, hf = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    prompts = ["ROMEO:\nI", "First Citizen:\nWe are"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    newline = tokenizer.convert_tokens_to_ids("\n")
    pads = len(prompts[1]) - len(prompts[0])  # one token per character
    assert tokenizer.pad_token_id == newline and batch["input_ids"][0, :pads].tolist() == [newline] * pads  # left
    assert batch["attention_mask"][0].tolist() == [0] * pads + [1] * len(prompts[0])
    together = hf.generate(**batch, max_new_tokens=8, do_sample=False, eos_token_id=[])
    for row, prompt in zip(together, prompts):
        alone = hf.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False,
                            eos_token_id=[])[0]
        assert row[-len(alone):].tolist() == alone.tolist()


@pytest.mark.parametrize("case", ["gpt2-gelu-tied", "llama-swiglu-tied"])
def test_generate_stops_at_the_end_of_a_line(case, exported, capsys):
    run_dir, out = exported(case)
    expected = nanolab_sample(run_dir, PROMPT, capsys)  # greedy, 26 tokens, newlines included
    tokenizer, hf = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    ids = hf.generate(**tokenizer(PROMPT, return_tensors="pt"), do_sample=False)[0]
    first_line = expected[:expected.index("\n", len(PROMPT)) + 1]  # up to the first newline nanolab generates
    assert tokenizer.decode(ids) == first_line and ids[-1].item() == tokenizer.eos_token_id


def test_unknown_characters_read_as_the_documented_newline(exported):
    _, out = exported("gpt2-gelu-tied")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.unk_token == tokenizer.eos_token == tokenizer.bos_token == "\n"
    assert tokenizer("a\u00e9b")["input_ids"] == tokenizer("a\nb")["input_ids"]
    assert "a character outside the vocabulary reads as a newline" in " ".join((out / "README.md").read_text().split())


@pytest.mark.parametrize("case", ["gpt2-gelu-tied", "llama-swiglu-tied"])
def test_the_model_card_has_hub_front_matter_results_and_provenance(case, exported):
    import yaml

    run_dir, out = exported(case)
    card = (out / "README.md").read_text()
    _, matter, body = card.split("---\n", 2)
    front = yaml.safe_load(matter)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert CASES[case][1] in front["tags"]
    folder = RunFolder(run_dir)
    summary, meta = folder.read_summary(), folder.read_meta()
    best_bpc = next(r["val/bpc"] for r in folder.metrics() if r["step"] == summary["best/step"] and "val/bpc" in r)
    assert (f"| best | {summary['best/step']} | {summary['best/val_loss']:.4f} | {best_bpc:.4f} |" in body)
    assert f"| final | {summary['steps']} | {summary['final/val_loss']:.4f} | {summary['final/val_bpc']:.4f} |" in body
    assert meta["git"]["commit"] in body and f"nanolab {meta['versions']['nanolab']}" in body
    assert folder.config_path.read_text().rstrip() in body
