"""The sharded sampler: candidates spread over 2 ranks (gloo) against the exact law on a toy,
and `python -m edlm_dist.sample` end to end under torchrun with its outputs and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_utils import run_distributed
from edlm_dist.diffusion import SamplingStats, sample
from edlm_dist.distributed import RankPool, init_distributed
from test_importance_sampling import STEPS, WINDOW, chi_square, implied_edlm_distribution, table_energy
from toy_dist import ExactDenoiser, ToyDistribution

N_TOY = 20000


def toy() -> ToyDistribution:
    return ToyDistribution(vocab=3, length=4, seed=3, temperature=2.0)


def sample_with_candidates_over_ranks(k: int, seed: int, out: Path) -> None:
    """Every rank: the toy's EDLM samples with the k candidates split over the ranks; each rank
    writes what it got."""
    source = toy()
    rank = init_distributed("cpu", "gloo", 60).rank
    stats = SamplingStats()
    x = sample(
        ExactDenoiser(source), batch_size=N_TOY, seq_len=source.length, mask_id=source.mask_id, steps=STEPS,
        energy=table_energy(source), num_candidates=k, window=WINDOW, pool=RankPool(), stats=stats,
        generator=torch.Generator().manual_seed(seed), candidate_generator=torch.Generator().manual_seed(1000 + rank),
    )
    torch.save({"x": x, "energy_rows": stats.energy_rows, "ess": stats.mean_ess}, out / f"rank{rank}.pt")


def test_candidates_over_two_ranks_sample_the_law_of_k_candidates(tmp_path):
    k = 4
    run_distributed(sample_with_candidates_over_ranks, 2, k, 5, tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(results[0]["x"], results[1]["x"])  # every rank holds the same sequences
    assert results[0]["energy_rows"] == results[1]["energy_rows"]  # each scored half of the candidates
    assert results[0]["energy_rows"] % (N_TOY * k // 2) == 0
    source = toy()
    exact = implied_edlm_distribution(source, STEPS, energy=table_energy(source), num_candidates=k, window=WINDOW)
    stat, bound = chi_square(results[0]["x"], source, exact)
    assert stat < bound, (stat, bound)  # the law of one process with k candidates: world-size independent


def test_rank_pool_needs_k_divisible_by_the_world_size(tmp_path):
    with pytest.raises(Exception, match="must be divisible by the world size"):
        run_distributed(sample_with_candidates_over_ranks, 2, 3, 5, tmp_path)


# ---- python -m edlm_dist.sample under torchrun ------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MDLM, a tiny AR (the energy) and a separately trained tiny AR (the oracle)."""
    from edlm_dist.training import Trainer
    from run_utils import debug_config

    root = tmp_path_factory.mktemp("sampler_runs")
    for name, overrides in {"mdlm": [], "ar": ["--training.task=ar"],
                            "oracle": ["--training.task=ar", "--job.seed=7"]}.items():
        Trainer(debug_config(root, f"--job.name={name}", "--training.steps=4", *overrides)).run()
    return root


def sample_command(runs: Path, out: Path, *extra: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "edlm_dist.sample", "--config", str(Path(__file__).parents[1] / "configs" / "debug_sample.toml"),
        "--checkpoint", str(runs / "mdlm"), "--out", str(out / "samples"),
        "--energy.kind=ar", f"--energy.checkpoint={runs / 'ar'}", f"--sample.oracle={runs / 'oracle'}",
        "--sample.num_samples=6", "--sample.batch_size=4", "--sample.steps=8", "--sample.num_candidates=4",
        "--sample.window=0.5", "--metrics.progress=false", *extra,
    ]


def run_sampler(runs: Path, out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(sample_command(runs, out, *extra, nproc=nproc), capture_output=True, text=True, env=env,
                          timeout=240)


@pytest.mark.parametrize("mode", ["batch", "candidates"])
def test_sampler_end_to_end_on_two_ranks(runs, tmp_path, mode):
    proc = run_sampler(runs, tmp_path, f"--sample.mode={mode}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "samples"
    records = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    for r in records:
        assert len(r["tokens"]) == 16 and isinstance(r["text"], str) and r["wall_time_s"] > 0
        assert r["settings"] == {"steps": 8, "num_candidates": 4, "window": 0.5, "mode": mode, "energy": "ar", "seed": 0}
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("num_samples", "steps", "num_candidates", "window", "wall_time_per_sample_s", "wall_time_per_step_s",
                "denoiser_evals_per_sample", "energy_evals_per_sample", "mean_ess", "entropy_bits", "entropy_nats",
                "gen_ppl", "reference", "peak_memory_gib_per_rank"):
        assert key in summary, key
    assert summary["num_samples"] == 6 and summary["world_size"] == 2 and summary["mode"] == mode
    assert 1.0 <= summary["mean_ess"] <= 4.0
    assert 1 <= summary["denoiser_evals_per_sample"] <= 8
    assert summary["energy_evals_per_sample"] >= 4  # k candidates at each importance-sampling choice
    assert summary["entropy_nats"] == pytest.approx(summary["entropy_bits"] * 0.6931471805599453)
    assert summary["gen_ppl"]["gen_ppl"] > 1 and summary["reference"]["gen_ppl"]["gen_ppl"] > 1
    assert summary["reference"]["num_samples"] == 6
    assert "Gen PPL" in proc.stdout and (folder / "tb").is_dir()


def test_sampler_refuses_bad_settings(runs, tmp_path):
    proc = run_sampler(runs, tmp_path, "--sample.mode=candidates", "--sample.num_candidates=3")
    assert proc.returncode != 0 and "sample.num_candidates (3) must be divisible by the world size (2)" in proc.stderr


@pytest.mark.parametrize("extra,match", [
    (["--sample.window=1.5"], "sample.window must be in [0, 1]"),
    (["--sample.steps=0"], "sample.steps must be >= 1"),
    (["--sample.oracle={ar}"], "is the AR model of the energy"),
    (["--energy.checkpoint={mdlm}"], "expected a 'ar' run"),
    (["--checkpoint"], "--checkpoint needs a value"),
])
def test_sampler_errors_are_one_line(runs, tmp_path, capsys, extra, match):
    from edlm_dist.sample import main

    args = sample_command(runs, tmp_path)[7:] + [e.format(ar=runs / "ar", mdlm=runs / "mdlm") for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_prompts_are_continued_in_one_process(runs, tmp_path):
    from edlm_dist.data import build_dataset
    from edlm_dist.sample import main
    from edlm_dist.runs import find_checkpoint

    tokenizer = build_dataset(find_checkpoint(runs / "mdlm").config.data).tokenizer
    first, second = [tokenizer.decode(ids) for ids in ([1, 2, 3], [4, 4])]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{first}\n\n{second}\n")
    main(sample_command(runs, tmp_path)[7:] + [f"--sample.prompts={prompts}", "--sample.num_samples=3"])
    records = [json.loads(line) for line in (tmp_path / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [r["tokens"][:3] for r in records[::2]] == [[1, 2, 3], [1, 2, 3]]
    assert records[1]["tokens"][:2] == [4, 4]
    summary = json.loads((tmp_path / "samples" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["num_samples"] == 3


def test_a_prompt_as_long_as_the_sequence_and_a_chat_without_template_are_refused(runs, tmp_path, capsys):
    from edlm_dist.sample import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ba " * 40 + "\n")
    with pytest.raises(SystemExit):
        main(sample_command(runs, tmp_path)[7:] + [f"--sample.prompts={prompts}"])
    assert "line 1 of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(sample_command(runs, tmp_path)[7:] + ["--sample.chat=true"])
    assert "sample.chat = true renders the prompts of sample.prompts, which is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(sample_command(runs, tmp_path)[7:] + [f"--sample.prompts={prompts}", "--sample.chat=true"])
    assert "has no chat template" in capsys.readouterr().err


def test_samples_repeat_from_the_seed_and_both_modes_agree_on_one_rank(runs, tmp_path):
    from edlm_dist.sample import main

    tokens = {}
    for name, extra in {"a": [], "b": [], "candidates": ["--sample.mode=candidates"],
                        "other_seed": ["--job.seed=1"]}.items():
        main(sample_command(runs, tmp_path)[7:] + ["--out", str(tmp_path / name), "--sample.oracle=", *extra])
        lines = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        tokens[name] = [json.loads(line)["tokens"] for line in lines]
    assert tokens["a"] == tokens["b"] == tokens["candidates"]
    assert tokens["other_seed"] != tokens["a"]
    assert "gen_ppl" not in json.loads((tmp_path / "a" / "summary.json").read_text())  # no oracle, no Gen PPL


@pytest.mark.slow
def test_compiled_sampling_runs(runs, tmp_path):
    from edlm_dist.sample import main

    main(sample_command(runs, tmp_path)[7:] + ["--sample.compile=true", "--sample.candidate_draw=inverse_cdf"])
    summary = json.loads((tmp_path / "samples" / "summary.json").read_text())
    assert summary["num_samples"] == 6 and summary["gen_ppl"]["gen_ppl"] > 1
