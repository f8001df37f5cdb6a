"""The recipes of docs/recipes.md at their real sizes, before any GPU run: the memory per rank of
each recipe's training and sampling from the memory plan (edlm_dist.runs.memory_plan) at each
world size, and the throughput a FLOP count predicts on an H100 at an assumed MFU. A plan until a
GPU run confirms it.

The models are the ones tools/import_hf.py and tools/import_mdlm.py write for the public
checkpoints: made here from the keys of their config.json files that set a size (CHECKPOINTS) by
the importer's own reading (`interop.hf_layout.read_architecture`), and built on the meta device.
mdlm-owt is MDLM's `small` DiT over GPT-2's 50257 ids. Every run holds 1024-token sequences
(`--seq-len 1024` at import, as docs/recipes.md imports them).

Throughput: training tokens/s per GPU = MFU x peak / FLOPs per data token; NCE trains the energy
on the positive and its negatives, (1 + negatives) x (6 N + 12 n_layers n_heads head_dim L), and
the frozen denoiser draws the negatives, negatives x a forward (a third of that) of its own.
Sampling: a sequence costs at most steps x a denoiser forward over L tokens, plus, in the window
(a fraction w of the steps), k energy forwards over L tokens (`LanguageModel.flops_per_token` / 3
per token); samples/s = GPUs x MFU x peak / that.

usage: python tools/recipe_plan.py [--world-sizes 8,64] [--mfu 0.4] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edlm_dist.config import SampleProgram, TrainProgram, load_config
from edlm_dist.config.schema import DataConfig, TrainingConfig
from edlm_dist.energy.loading import nce_model_config
from edlm_dist.interop.hf_layout import read_architecture
from edlm_dist.models import MODEL_KINDS, meta_model
from edlm_dist.runs.memory_plan import MemoryPlan, format_bytes, sampling_plan, training_plan

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
SEQ_LEN = 1024
GPT2_IDS = 50257
# name -> (the config.json keys that set its architecture, the token ids of its tokenizer.json)
CHECKPOINTS: dict[str, tuple[dict[str, Any], int]] = {
    "llada-8b": ({"model_type": "llada", "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32,
                  "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "rope_theta": 500000.0,
                  "mask_token_id": 126336, "block_type": "llama", "activation_type": "silu",
                  "layer_norm_type": "rms", "rope": True, "weight_tying": False, "residual_dropout": 0.0,
                  "max_sequence_length": 4096}, 126464),
    "dream-7b": ({"model_type": "Dream", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                  "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1e6,
                  "mask_token_id": 151666, "tie_word_embeddings": False, "max_position_embeddings": 131072},
                 151667),
    "qwen2.5-7b": ({"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                    "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1e6,
                    "tie_word_embeddings": False, "bos_token_id": 151643, "max_position_embeddings": 131072},
                   151667),  # imported with Dream's tokenizer.json (docs/recipes.md), Qwen2.5's own has 151665 ids
    "gpt2": ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": GPT2_IDS,
              "n_positions": 1024, "bos_token_id": 50256}, GPT2_IDS),
}


@dataclass(frozen=True)
class Recipe:
    """One recipe: its denoiser and energy runs (names of CHECKPOINTS, "mdlm-owt", or an NCE
    training config of configs/recipes/), its sampling config, and its training config if any."""

    name: str
    denoiser: str
    energy: str
    sample: str
    train: str = ""


RECIPE_LIST = [
    Recipe("1. LLaDA-8B + NCE energy", "llada-8b", "llada_nce.toml", "llada_nce_sample.toml", "llada_nce.toml"),
    Recipe("2. Dream-7B + Qwen2.5-7B coAR", "dream-7b", "qwen2.5-7b", "dream_coar_sample.toml"),
    Recipe("3. mdlm-owt + GPT-2 AR", "mdlm-owt", "gpt2", "mdlm_owt_ar_sample.toml"),
]


def imported_run(name: str) -> tuple[TrainProgram, int]:
    """The run config tools/import_hf.py (or import_mdlm.py for mdlm-owt) writes for checkpoint
    `name` at SEQ_LEN tokens, and its number of token ids."""
    if name == "mdlm-owt":
        return load_config(TrainProgram, None, ["--model.preset=small", f"--data.seq_len={SEQ_LEN}"]), GPT2_IDS
    values, ids = CHECKPOINTS[name]
    arch = read_architecture(values, f"{name} config.json")
    model = arch.model_config(ids, values.get("bos_token_id", -1))
    return TrainProgram(model=model, data=DataConfig(seq_len=SEQ_LEN), training=TrainingConfig(task=arch.task)), ids


def nce_run(config: str, denoiser: TrainProgram) -> TrainProgram:
    """The NCE training config `config` of configs/recipes/ with its [model] resolved from its
    denoiser's run config, as the train entry point resolves it."""
    cfg = load_config(TrainProgram, RECIPES / config)
    return dataclasses.replace(cfg, model=nce_model_config(cfg, denoiser))


def run_of(name: str, denoiser: TrainProgram) -> TrainProgram:
    return nce_run(name, denoiser) if name.endswith(".toml") else imported_run(name)[0]


def forward_flops(run: TrainProgram, ids: int) -> float:
    """FLOPs per token of one forward of the run's model (a third of the training count)."""
    return meta_model(MODEL_KINDS[run.training.task], run.model, ids).flops_per_token(SEQ_LEN) / 3


def training_rows(recipe: Recipe, worlds: list[int], mfu: float, peak: float) -> list[str]:
    """Markdown rows: the training plan per rank at each world size and the predicted tokens/s."""
    denoiser, ids = imported_run(recipe.denoiser)
    cfg = nce_run(recipe.train, denoiser)
    plans = [training_plan(cfg, world, ids, "cuda", sharded=True) for world in worlds]
    energy = forward_flops(cfg, ids)
    negatives = cfg.nce.num_negatives
    flops = (1 + negatives) * 3 * energy + negatives * forward_flops(denoiser, ids)
    tokens = mfu * peak / flops
    step_tokens = cfg.training.global_batch_size * cfg.data.seq_len
    steps = ", ".join(f"{world} GPUs: {step_tokens / (tokens * world):,.1f} s per step, "
                      f"{cfg.training.steps * step_tokens / (tokens * world) / 3600:,.1f} h for {cfg.training.steps:,} "
                      "steps" for world in worlds)
    return [f"| {recipe.name} | training ({recipe.train}: {step_tokens:,} tokens per step) | "
            f"{memory_cells(plans, worlds)} | {flops / 1e9:,.1f} GFLOP per data token: {tokens:,.0f} tokens/s "
            f"per GPU; {steps} |"]


def memory_cells(plans: list[MemoryPlan], worlds: list[int]) -> str:
    """The peak per rank at each world size, and what it is made of at the first."""
    peaks = ", ".join(f"{world} GPUs: {format_bytes(plan.peak)}" for world, plan in zip(worlds, plans))
    first = plans[0]
    return (f"{peaks} (at {worlds[0]}: resident {format_bytes(first.resident)}, peak phase {first.peak_phase}, "
            f"largest item {first.largest().name} {format_bytes(first.largest().bytes)})")


def sampling_rows(recipe: Recipe, worlds: list[int], mfu: float, peak: float) -> list[str]:
    """Markdown rows: the sampling plan per rank at each world size and the predicted samples/s."""
    denoiser, ids = imported_run(recipe.denoiser)
    cfg = load_config(SampleProgram, RECIPES / recipe.sample)
    s = cfg.sample
    energy = run_of(recipe.energy, denoiser)
    energy_ids = ids if energy.model.family == "dit" else energy.model.vocab_size
    plans = [sampling_plan(cfg, denoiser, ids, energy, world, "cuda") for world in worlds]
    energy_flops = forward_flops(energy, energy_ids)
    per_sample = SEQ_LEN * s.steps * (forward_flops(denoiser, ids) + s.window * s.num_candidates * energy_flops)
    gpu_s = per_sample / (mfu * peak)
    throughput = ", ".join(f"{world} GPUs: {world / gpu_s:,.2f} samples/s" for world in worlds)
    return [f"| {recipe.name} | sampling ({recipe.sample}: {s.steps} steps, k = {s.num_candidates}, w = {s.window}, "
            f"batch {s.batch_size}) | {memory_cells(plans, worlds)} | at most {per_sample / 1e15:,.1f} PFLOP "
            f"per sample: {gpu_s:,.1f} GPU-s per sample; {throughput} |"]


def parameters(name: str) -> str:
    """The parameter count of an imported checkpoint's model, in words."""
    run, ids = imported_run(name)
    model = meta_model(MODEL_KINDS[run.training.task], run.model, ids)
    return f"{name}: {model.num_params(exclude_input_embedding=False) / 1e9:.2f}B parameters"


def report(worlds: list[int], mfu: float, peak: float) -> str:
    """The markdown table of every recipe."""
    lines = [f"Assumed: H100 dense bf16 peak {peak / 1e12:,.0f} TFLOP/s, MFU {mfu:.0%}, {SEQ_LEN}-token sequences. "
             + "; ".join(parameters(name) for name in (*CHECKPOINTS, "mdlm-owt")) + ".", "",
             "| recipe | stage | memory per rank (memory plan, CUDA, FSDP2 for training) | predicted throughput |",
             "|---|---|---|---|"]
    for recipe in RECIPE_LIST:
        if recipe.train:
            lines += training_rows(recipe, worlds, mfu, peak)
        lines += sampling_rows(recipe, worlds, mfu, peak)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-sizes", default="8,64", help="comma-separated numbers of GPUs (default 8,64)")
    parser.add_argument("--mfu", type=float, default=0.4, help="the assumed model FLOP utilisation (default 0.4)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's dense bf16 peak in TFLOP/s (default 989: an H100 SXM)")
    args = parser.parse_args(argv)
    worlds = [int(world) for world in args.world_sizes.split(",")]
    if not 0 < args.mfu <= 1 or min(worlds) < 1:
        parser.error(f"--mfu must be in (0, 1] and world sizes >= 1, got {args.mfu} and {args.world_sizes}")
    print(report(worlds, args.mfu, args.peak_tflops * 1e12))


if __name__ == "__main__":
    main()
