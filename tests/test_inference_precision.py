"""`runtime.inference_weights`: sampling and evaluation load the models they only read in float32
(the default, unchanged) or in the compute dtype ("compute"): bf16 parameters on a CPU under
`runtime.mixed_precision = bf16`, energies and log-probabilities still float32/float64 and finite,
figures close to float32's, and a memory plan that counts half the weight bytes and no autocast copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edlm_dist.config import ConfigError, EvalProgram, SampleProgram, TrainProgram, load_config
from edlm_dist.distributed import autocast
from edlm_dist.energy.loading import load_denoiser, load_energy
from edlm_dist.evaluation import Sampler
from edlm_dist.evaluation.perplexity import build_eval_model
from edlm_dist.runs import find_checkpoint, load_weights
from edlm_dist.runs.memory_plan import sampling_plan
from edlm_dist.runs.weights import checkpoint_tokens, inference_dtype
from run_utils import DEBUG_CONFIG, DEBUG_EVAL, debug_config

DEBUG_SAMPLE = Path(__file__).parents[1] / "configs" / "debug_sample.toml"
BF16 = ["--runtime.mixed_precision=bf16", "--runtime.inference_weights=compute"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MDLM, AR and EDLM-NCE (from the MDLM)."""
    from edlm_dist.training import Trainer

    root = tmp_path_factory.mktemp("inference_runs")
    for name, extra in {"mdlm": [], "ar": ["--training.task=ar"],
                        "nce": ["--training.task=nce", f"--nce.denoiser={root / 'mdlm'}", "--nce.ess_candidates=0"]}.items():
        Trainer(debug_config(root, f"--job.name={name}", "--training.steps=3", *extra)).run()
    return root


def test_the_key_picks_the_compute_dtype_and_training_has_no_such_key():
    dtype = {(p, w): inference_dtype(load_config(SampleProgram, None, [f"--runtime.mixed_precision={p}",
                                                                        f"--runtime.inference_weights={w}"]).runtime, CPU)
             for p in ("auto", "bf16", "fp32") for w in ("float32", "compute")}
    assert dtype == {("auto", "float32"): torch.float32, ("auto", "compute"): torch.float32,  # auto: fp32 on a CPU
                     ("bf16", "float32"): torch.float32, ("bf16", "compute"): torch.bfloat16,
                     ("fp32", "float32"): torch.float32, ("fp32", "compute"): torch.float32}
    assert load_config(EvalProgram, None, []).runtime.inference_weights == "float32"
    with pytest.raises(ConfigError, match="inference_weights"):
        load_config(TrainProgram, DEBUG_CONFIG, ["--runtime.inference_weights=compute"])


def test_weights_load_in_bf16_as_the_float32_ones_rounded(runs):
    ckpt = find_checkpoint(runs / "mdlm")
    full, which = load_weights(ckpt)
    half, same = load_weights(ckpt, dtype=torch.bfloat16)
    assert which == same == "ema" and not half.training
    for (name, a), (_, b) in zip(full.named_parameters(), half.named_parameters()):
        assert a.dtype == torch.float32 and b.dtype == torch.bfloat16, name
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_energies_and_log_probs_stay_float_and_finite_and_close(runs):
    denoiser_ckpt = find_checkpoint(runs / "mdlm")
    tokens = checkpoint_tokens(denoiser_ckpt)
    x0 = torch.randint(0, tokens.num_data, (3, 16), generator=torch.Generator().manual_seed(0))
    xt = x0.clone()
    xt[:, ::2] = tokens.mask_id
    t = torch.full((3,), 0.5)
    logp = torch.zeros(3, dtype=torch.float64)
    for kind, run in (("ar", "ar"), ("coar", "ar"), ("nce", "nce")):
        cfg = load_config(SampleProgram, None, [f"--energy.kind={kind}", f"--energy.checkpoint={runs / run}"]).energy
        energies = {}
        for dtype in (torch.float32, torch.bfloat16):
            energy = load_energy(cfg, denoiser_ckpt, CPU, dtype)
            network = getattr(energy, "model", None) or energy.ar_model
            assert {p.dtype for p in network.parameters()} == {dtype}
            with torch.no_grad(), autocast(CPU, torch.bfloat16):
                energies[dtype] = energy(x0, xt, t, logp)
                if kind == "ar":
                    log_probs = network.token_log_probs(x0)
                    assert log_probs.dtype == torch.float32 and log_probs.isfinite().all()
        assert energies[torch.bfloat16].dtype in (torch.float32, torch.float64)
        assert energies[torch.bfloat16].isfinite().all(), kind
        torch.testing.assert_close(energies[torch.bfloat16].double(), energies[torch.float32].double(),
                                   rtol=0.05, atol=0.5)
    denoiser, _ = load_denoiser(str(runs / "mdlm"), "sample.checkpoint", cfg, CPU, torch.bfloat16)
    assert {p.dtype for p in denoiser.parameters()} == {torch.bfloat16}


def sample_args(runs: Path, out: Path, *extra: str) -> list[str]:
    return [f"--sample.checkpoint={runs / 'mdlm'}", f"--sample.output={out}", "--energy.kind=ar",
            f"--energy.checkpoint={runs / 'ar'}", "--sample.num_samples=4",
            "--sample.num_candidates=2", "--sample.window=0.5", "--sample.reference=false", *extra]


def test_sampling_in_bf16_weights_runs_and_agrees_with_float32(runs, tmp_path):
    from edlm_dist.sample import main

    half = Sampler(load_config(SampleProgram, DEBUG_SAMPLE, sample_args(runs, tmp_path / "half", *BF16)))
    for model in (half.denoiser, half.energy.ar_model):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    half.run()
    main(["--config", str(DEBUG_SAMPLE), *sample_args(runs, tmp_path / "full", "--runtime.mixed_precision=bf16")])
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in ("half", "full")}
    for summary in summaries.values():
        assert summary["num_samples"] == 4 and 1.0 <= summary["mean_ess"] <= 2.0
    samples = {}
    for name in ("half", "full"):
        lines = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        samples[name] = [json.loads(line)["tokens"] for line in lines]
    same = sum(a == b for x, y in zip(samples["half"], samples["full"]) for a, b in zip(x, y))
    assert same >= 0.5 * 4 * 16  # the same noise: bf16 weights move few draws
    saved = load_config(SampleProgram, tmp_path / "half" / "config.toml")
    assert saved.runtime.inference_weights == "compute"


def test_evaluation_in_bf16_weights_is_close_to_float32(runs, tmp_path):
    from edlm_dist.eval import main

    checkpoints = ",".join(str(runs / m) for m in ("mdlm", "ar", "nce"))
    args = ["--config", str(DEBUG_EVAL), "--checkpoint", checkpoints, "--eval.num_sequences=4",
            "--eval.batch_size=4", "--eval.num_proposals=2"]
    main([*args, f"--eval.output={tmp_path / 'half'}", *BF16])
    main([*args, f"--eval.output={tmp_path / 'full'}", "--runtime.mixed_precision=bf16"])
    results = {name: {p.relative_to(tmp_path / name): json.loads(p.read_text())
                      for p in sorted((tmp_path / name).glob("*/*/*/step_*.json"))} for name in ("half", "full")}
    assert results["half"].keys() == results["full"].keys() and len(results["half"]) == 3
    for path, half in results["half"].items():
        for figure, value in half["figures"].items():
            expected = results["full"][path]["figures"][figure]["nats_per_token"]
            assert value["nats_per_token"] == pytest.approx(expected, rel=1e-2), (path, figure)
    cfg = load_config(EvalProgram, DEBUG_EVAL, BF16)
    em = build_eval_model(find_checkpoint(runs / "nce"), cfg, CPU)
    assert {p.dtype for p in em.model.parameters()} == {p.dtype for p in em.energy.model.parameters()} == {torch.bfloat16}


def test_the_sampling_plan_counts_half_the_weight_bytes_and_no_autocast_copy(runs):
    denoiser, energy = find_checkpoint(runs / "mdlm").config, find_checkpoint(runs / "ar").config
    plans = {w: sampling_plan(load_config(SampleProgram, None, ["--sample.num_candidates=2", "--energy.kind=ar",
                                                                "--runtime.mixed_precision=bf16",
                                                                f"--runtime.inference_weights={w}"]),
                              denoiser, 8, energy, 1, "cuda") for w in ("float32", "compute")}
    weights = {w: {i.name: i.bytes for i in plan.items if "weight" in i.name} for w, plan in plans.items()}
    assert set(weights["float32"]) == {"denoiser weights (float32)", "denoiser bf16 weight copies (autocast)",
                                       "energy (ar) weights (float32)", "energy (ar) bf16 weight copies (autocast)"}
    assert weights["compute"] == {"denoiser weights (bf16)": weights["float32"]["denoiser weights (float32)"] // 2,
                                  "energy (ar) weights (bf16)": weights["float32"]["energy (ar) weights (float32)"] // 2}
    assert plans["compute"].resident * 3 == plans["float32"].resident  # 2 bytes a parameter against 4 + 2
    assert plans["compute"].peak < plans["float32"].peak and "bf16 weights" in plans["compute"].setting
