"""The recipes of docs/recipes.md (configs/recipes/) run for real on the CPU with their models
shrunk: tiny checkpoints in LLaDA's, Dream's, Qwen2's, GPT-2's and MDLM's layouts
(tests/hf_reference.py, tests/mdlm_reference.py), imported in this process as the recipes import
the real ones, and each recipe's config loaded with overrides that shrink only what a tiny model
needs (sequence length, batch, steps, the device); and tools/recipe_plan.py at the real sizes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from edlm_dist.eval import main as evaluate
from edlm_dist.sample import main as sample
from edlm_dist.train import main as train
from hf_reference import write_layout
from mdlm_reference import random_backbone
from test_hf_energies import write_tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"
LENGTH = 16
GPT2_IDS = 50257
CPU = ["--runtime.device=cpu", "--runtime.mixed_precision=fp32", "--metrics.progress=false",
       "--metrics.tensorboard=false"]
SMALL_SAMPLING = [*CPU, "--sample.num_samples=2", "--sample.batch_size=2", "--sample.steps=4", "--sample.compile=false",
                  "--sample.oracle=", "--sample.reference=false"]
SMALL_EVAL = [*CPU, "--eval.num_sequences=2", "--eval.batch_size=2", "--eval.num_proposals=2"]


def tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny LLaDA, Dream and Qwen2 checkpoints with their tokenizers imported as runs of LENGTH
    tokens (folders named as the recipes name theirs)."""
    root = tmp_path_factory.mktemp("recipes")
    import_hf = tool("import_hf")
    for layout, name in (("llada", "llada-8b"), ("dream", "dream-7b"), ("qwen2", "qwen2.5-7b")):
        write_layout(layout, root / "hf" / layout)
        write_tokenizer(root / "hf" / layout, mask=layout != "qwen2")  # the folders bring their tokenizer.json
        import_hf([str(root / "hf" / layout), "--out", str(root / name), "--seq-len", str(LENGTH)])
    return root


def word_text(lines: int) -> str:
    """Text in the tiny tokenizers' words (w1..w80), `lines` lines of 9 words."""
    return "\n".join(" ".join(f"w{(7 * i + j) % 80 + 1}" for j in range(9)) for i in range(lines)) + "\n"


@pytest.fixture
def ptb_words(tmp_path: Path) -> Path:
    """A PTB-layout validation file in the tiny tokenizers' words."""
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.valid.txt").write_text(word_text(12))
    return tmp_path / "ptb"


def sampled(out: Path, kind: str) -> None:
    """Check that a sampling run wrote its 2 samples, EDLM with 2 candidates and an energy of `kind`."""
    summary = json.loads((out / "summary.json").read_text())
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2
    assert (summary["energy"], summary["num_candidates"]) == (kind, 2)


def scored(out: Path, estimator: str) -> list[Path]:
    """The result files of an evaluation under `out` for `estimator` (e.g. edlm_coar)."""
    found = sorted(out.rglob(f"{estimator}/*/step_*.json"))
    assert found, sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))
    return found


def sample_and_score(recipe: str, denoiser: Path, energy: Path, kind: str, datasets: str, tmp_path: Path) -> None:
    """Run `<recipe>_sample.toml` and `<recipe>_eval.toml` on `denoiser` with the `kind` energy
    `energy` (the likelihood on `datasets`) and check what each wrote."""
    energy_key = f"--energy.checkpoint={energy}"
    sample(["--config", str(RECIPES / f"{recipe}_sample.toml"), "--checkpoint", str(denoiser),
            "--out", str(tmp_path / "samples"), energy_key, *SMALL_SAMPLING])
    sampled(tmp_path / "samples", kind)
    evaluate(["--config", str(RECIPES / f"{recipe}_eval.toml"), "--checkpoint", str(denoiser),
              "--out", str(tmp_path / "eval"), energy_key, f"--eval.datasets={datasets}", *SMALL_EVAL])
    scored(tmp_path / "eval", f"edlm_{kind}")


def test_dream_with_a_qwen2_coar_energy_samples_and_is_scored(runs, ptb_words, tmp_path):
    sample_and_score("dream_coar", runs / "dream-7b", runs / "qwen2.5-7b", "coar", f"ptb:val={ptb_words}", tmp_path)


@pytest.fixture(scope="module")
def mdlm_owt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MDLM in mdlm-owt's Hugging Face layout (GPT-2's 50257 ids and the mask) and a tiny
    GPT-2 with GPT-2's vocabulary, imported as runs/mdlm-owt and runs/gpt2 are."""
    root = tmp_path_factory.mktemp("mdlm_owt")
    source = root / "hf" / "mdlm-owt"
    source.mkdir(parents=True)
    config = {"architectures": ["MDLM"], "model_type": "mdlm", "vocab_size": GPT2_IDS + 1, "model_length": LENGTH,
              "hidden_dim": 32, "cond_dim": 16, "n_blocks": 2, "n_heads": 4, "dropout": 0.1,
              "time_conditioning": False, "return_dict": False}
    (source / "config.json").write_text(json.dumps(config))
    state = random_backbone(False, 0, vocab=GPT2_IDS + 1).state_dict()
    save_file({f"backbone.{k}": v.contiguous() for k, v in state.items()}, source / "model.safetensors")
    tool("import_mdlm")([str(source), "--out", str(root / "mdlm-owt")])
    torch.manual_seed(3)
    GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_IDS, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                               bos_token_id=GPT2_IDS - 1, eos_token_id=GPT2_IDS - 1)).save_pretrained(root / "hf" / "gpt2")
    tool("import_hf")([str(root / "hf" / "gpt2"), "--out", str(root / "gpt2"), "--seq-len", str(LENGTH)])
    return root


@pytest.mark.data
def test_mdlm_owt_with_a_gpt2_ar_energy_samples_and_is_scored(mdlm_owt, data_dir, tmp_path):
    sample_and_score("mdlm_owt_ar", mdlm_owt / "mdlm-owt", mdlm_owt / "gpt2", "ar", "wikitext2", tmp_path)


def test_llada_nce_recipe_trains_a_few_steps_then_samples_and_is_scored(runs, ptb_words, tmp_path, capsys):
    run = tmp_path / "runs" / "llada-8b-nce"
    text = tmp_path / "corpus.txt"
    text.write_text(word_text(200))
    train(["--config", str(RECIPES / "llada_nce.toml"), *CPU, f"--job.dump_folder={run.parent}",
           f"--nce.denoiser={runs / 'llada-8b'}", "--data.dataset=text", "--data.tokenizer=hf",
           f"--data.tokenizer_path={runs / 'llada-8b' / 'tokenizer'}", f"--data.path={text}", "--data.format=auto",
           "--data.num_workers=0",
           f"--data.seq_len={LENGTH}", "--training.steps=2", "--training.global_batch_size=4",
           "--training.micro_batch_size=0", "--parallel.compile=false", "--checkpoint.interval=2",
           "--checkpoint.async_save=false", "--metrics.eval_interval=2", "--metrics.eval_batches=1",
           "--metrics.eval_batch_size=2", "--metrics.log_interval=1", "--nce.ess_candidates=2",
           "--nce.ess_sequences=2", "--nce.max_batch=4", "--sample.num_samples=1", "--sample.steps=4"])
    capsys.readouterr()
    assert (run / "finished").exists()
    energy = f"--energy.checkpoint={run}"
    sample(["--config", str(RECIPES / "llada_nce_sample.toml"), "--out", str(tmp_path / "samples"), energy,
            *SMALL_SAMPLING])
    sampled(tmp_path / "samples", "nce")
    evaluate(["--config", str(RECIPES / "llada_nce_eval.toml"), "--checkpoint", str(run),
              "--out", str(tmp_path / "eval"), f"--eval.datasets=ptb:val={ptb_words}", *SMALL_EVAL])
    scored(tmp_path / "eval", "edlm_nce")


def test_the_recipe_plan_builds_the_real_models_and_prints_every_recipe(capsys):
    tool("recipe_plan")(["--world-sizes", "8,64"])
    out = capsys.readouterr().out
    # the importer's reading of the real config.json sizes: LLaDA-8B, Dream-7B / Qwen2.5-7B, GPT-2 small
    assert "llada-8b: 8.02B parameters; dream-7b: 7.62B parameters; qwen2.5-7b: 7.62B parameters" in out
    assert "gpt2: 0.12B parameters" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1.") or line.startswith("| 2.")
            or line.startswith("| 3.")]
    assert len(rows) == 4 and all("8 GPUs: " in row and "64 GPUs: " in row for row in rows)
    assert "not buildable" not in out
