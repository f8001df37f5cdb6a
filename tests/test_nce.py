"""EDLM-NCE: the loss and diagnostics math, the energy network, learning on a toy source, and
building energies from checkpoints (with the errors a wrong pairing must give)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from edlm_dist.config import ConfigError, EnergyConfig, ModelConfig
from edlm_dist.diffusion import effective_sample_size, nce_loss, pairwise_accuracy
from edlm_dist.energy import AREnergy, NCEEnergy
from edlm_dist.models import build_model
from edlm_dist.runs import WeightsError, find_checkpoint
from edlm_dist.training import Trainer
from edlm_dist.energy.loading import load_denoiser, load_energy
from distributed_utils import run_distributed
from edlm_dist.train import main as train_main
from run_utils import DEBUG_CONFIG, debug_config, read_scalars

TINY = ModelConfig(n_layers=2, hidden_size=32, n_heads=2, cond_dim=16, dropout=0.0)


def test_nce_loss_is_the_binary_classification_loss_with_data_at_low_energy():
    pos, neg = torch.tensor([-1.0, 2.0]), torch.tensor([[0.5], [-3.0]])
    expected = -F.logsigmoid(-pos) - F.logsigmoid(neg[:, 0])
    torch.testing.assert_close(nce_loss(pos, neg), expected)
    pos.requires_grad_(True)
    nce_loss(pos, neg).sum().backward()
    assert (pos.grad > 0).all()  # descending the loss lowers the energy of data
    assert nce_loss(torch.zeros(3), torch.zeros(3, 1)) == pytest.approx(torch.full((3,), 2 * math.log(2)))


@pytest.mark.parametrize("m", [1, 4])
def test_nce_loss_with_m_negatives_is_minimised_by_the_log_ratio(m):
    """Over three points with data p and proposal q, the expected loss E_p[loss(E+)] with m
    negatives from q is minimised at E = -log(p / q), for any m (the log m shift pins it)."""
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    energy = torch.zeros(3, requires_grad=True)
    opt = torch.optim.LBFGS([energy], max_iter=200, line_search_fn="strong_wolfe")

    def expected_loss() -> torch.Tensor:
        opt.zero_grad()
        # E_{x+ ~ p} E_{x-_1..m ~ q} loss = sum_x p(x) l+(x) + m sum_x q(x) l-(x), read off nce_loss
        positive_part = nce_loss(energy, torch.full((3, m), math.inf))
        negative_part = nce_loss(torch.full((3,), -math.inf), energy[:, None].expand(3, m)) / m
        loss = (p * positive_part).sum() + m * (q * negative_part).sum()
        loss.backward()
        return loss

    opt.step(expected_loss)
    torch.testing.assert_close(energy.detach(), -(p / q).log(), atol=1e-4, rtol=0)


def test_pairwise_accuracy_and_ess():
    assert pairwise_accuracy(torch.tensor([0.0, 1.0]), torch.tensor([[1.0, -1.0], [2.0, 3.0]])).tolist() == [0.5, 1.0]
    assert effective_sample_size(torch.zeros(2, 16)).tolist() == pytest.approx([16.0, 16.0])
    assert effective_sample_size(torch.tensor([[0.0, 50.0, 50.0]])).item() == pytest.approx(1.0)
    energies = torch.tensor([0.0, math.log(3.0)])  # weights 3/4, 1/4
    assert effective_sample_size(energies).item() == pytest.approx(1 / (0.75**2 + 0.25**2))


def test_energy_net_starts_at_zero_and_reads_both_sequences():
    model = build_model("energy", TINY, vocab_size=7, seed=1)
    x0 = torch.randint(0, 7, (4, 8), generator=torch.Generator().manual_seed(0))
    xt = x0.masked_fill(torch.arange(8) % 2 == 0, 7)
    assert torch.equal(model(x0, xt), torch.zeros(4))
    with torch.no_grad():  # once the head and the marker are trained, E depends on x0 and on which were masked
        model.head.out.weight.normal_(generator=torch.Generator().manual_seed(1))
        model.masked_marker.normal_(generator=torch.Generator().manual_seed(2))
    other = x0.clone()
    other[:, 0] = (other[:, 0] + 1) % 7
    assert not torch.allclose(model(x0, xt), model(other, xt.masked_fill(torch.zeros(8, dtype=torch.bool), 7)))
    assert not torch.allclose(model(x0, xt), model(x0, x0))
    timed = build_model("energy", ModelConfig(**{**TINY.__dict__, "time_conditioning": True}), 7)
    with pytest.raises(ValueError, match="pass t"):
        timed(x0, xt)


def test_a_tiny_energy_learns_a_correlated_toy_source():
    """Data: L = 4 copies of one token (V = 6); proposal at t = 1: the factorised marginals
    (uniform i.i.d. tokens). The NCE-trained energy must give data the lower energy on >= 90%
    of held-out pairs that differ."""
    vocab, length, batch = 6, 4, 32
    gen = torch.Generator().manual_seed(0)

    def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = torch.randint(0, vocab, (n, 1), generator=gen).expand(n, length)
        negative = torch.randint(0, vocab, (n, length), generator=gen)
        return x0, negative, torch.full((n, length), vocab)

    model = build_model("energy", TINY, vocab_size=vocab, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        x0, negative, xt = pairs(batch)
        energies = model(torch.cat((x0, negative)), torch.cat((xt, xt)))
        loss = nce_loss(energies[:batch], energies[batch:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0, negative, xt = pairs(2000)
    differ = (x0 != negative).any(-1)
    with torch.no_grad():
        accuracy = (model(x0, xt) < model(negative, xt))[differ].double().mean().item()
    assert accuracy >= 0.9, accuracy


# ---- energies from checkpoints --------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny checkpoints: an MDLM, an AR on the same data, an AR on other data (vocabulary), an AR
    with another sequence length, and an NCE energy fine-tuned from the MDLM."""
    root = tmp_path_factory.mktemp("runs")
    specs = {
        "mdlm": [],
        "ar": ["--training.task=ar"],
        "ar_vocab": ["--training.task=ar", "--data.synthetic_states=12"],
        "ar_len": ["--training.task=ar", "--data.seq_len=32"],
    }
    for name, overrides in specs.items():
        trainer = Trainer(debug_config(root, f"--job.name={name}", "--training.steps=2", *overrides))
        trainer.run()
    nce = Trainer(debug_config(root, "--job.name=nce", "--training.task=nce", f"--nce.denoiser={root / 'mdlm'}",
                               "--training.steps=2", "--nce.ess_candidates=4", "--nce.ess_sequences=2"))
    nce.run()
    return root


def test_nce_run_logs_its_diagnostics(runs):
    scalars = read_scalars(runs / "nce")
    for tag in ("loss", "accuracy", "energy_pos", "energy_neg", "energy_gap"):
        assert len(scalars[f"train/{tag}"]) == 2, tag
    for tag in ("loss", "accuracy", "accuracy_t_ge_0.5", "ess_t0.25", "ess_t0.50", "ess_t0.75", "ess_t1.00"):
        (step, value), = scalars[f"val/{tag}"]
        assert step == 2 and math.isfinite(value), tag
    assert all(1.0 <= scalars[f"val/ess_t{t:.2f}"][0][1] <= 4.0 for t in (0.25, 0.5, 0.75, 1.0))
    summary = json.loads((runs / "nce" / "summary.json").read_text())
    assert summary["task"] == "nce" and len(summary["samples"]) == 2


def test_nce_training_starts_from_the_mdlm_backbone(runs):
    trainer = Trainer(debug_config(runs, "--job.name=fresh_nce", "--training.task=nce",
                                   f"--nce.denoiser={runs / 'mdlm'}"))
    denoiser, _ = load_denoiser(str(runs / "mdlm"), "sample.checkpoint", EnergyConfig())
    mdlm = denoiser.state_dict()
    energy = trainer.model.state_dict()
    shared = [name for name in energy if name in mdlm]
    assert "embed.weight" in shared and any(n.startswith("blocks.") for n in shared)
    for name in shared:
        assert torch.equal(energy[name], mdlm[name]), name
    assert trainer.cfg.model.n_layers == denoiser.config.n_layers
    assert trainer.train_step()["train/loss"] == pytest.approx(2 * math.log(2))  # E = 0 at the start


def test_print_config_shows_the_nce_model_config_resolved_from_its_denoiser(runs, capsys):
    """The printed config is what the run would build: [model] is the denoiser's (a wider one here)."""
    train_main(["--config", str(DEBUG_CONFIG), "--training.task=nce", f"--nce.denoiser={runs / 'mdlm'}",
                "--model.n_layers=9", "--model.dropout=0.05", "--print-config"])
    model = tomllib.loads(capsys.readouterr().out)["model"]
    denoiser = find_checkpoint(runs / "mdlm").config.model
    assert (model["n_layers"], model["hidden_size"], model["dropout"]) == (denoiser.n_layers, denoiser.hidden_size, 0.05)


@pytest.mark.parametrize("kind", ["ar", "coar", "nce"])
def test_energies_load_from_their_runs(runs, kind):
    checkpoint = runs / ("nce" if kind == "nce" else "ar")
    cfg = EnergyConfig(kind=kind, checkpoint=str(checkpoint))
    denoiser, denoiser_ckpt = load_denoiser(str(runs / "mdlm"), "sample.checkpoint", cfg)
    energy = load_energy(cfg, denoiser_ckpt)
    assert isinstance(energy, NCEEnergy if kind == "nce" else AREnergy)
    x0 = torch.randint(0, denoiser.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    xt = x0.masked_fill(torch.arange(16) < 8, denoiser.mask_id)
    values = energy(x0, xt, torch.full((3,), 0.5), torch.zeros(3, dtype=torch.float64))
    assert values.dtype == torch.float64 and values.shape == (3,) and torch.isfinite(values).all()


def test_an_nce_energy_finds_its_own_denoiser(runs):
    _, ckpt = load_denoiser("", "sample.checkpoint", EnergyConfig(kind="nce", checkpoint=str(runs / "nce")))
    assert ckpt.run_dir == runs / "mdlm"


@pytest.mark.parametrize("checkpoint,match", [
    ("", "energy.checkpoint is required"),
    ("mdlm", "is a 'mdlm' run; expected a 'ar' run"),
    ("ar_vocab", "vocabulary size of .* \\(13\\) does not match the denoiser"),
    ("ar_len", "data.seq_len of .* \\(32\\) does not match the denoiser"),
])
def test_mismatched_energies_are_refused(runs, checkpoint, match):
    cfg = EnergyConfig(kind="ar", checkpoint=str(runs / checkpoint) if checkpoint else "")
    with pytest.raises(WeightsError, match=match):
        load_energy(cfg, find_checkpoint(runs / "mdlm"))


@pytest.mark.parametrize("overrides,match", [
    (["--data.synthetic_states=12"], "vocabulary size of nce.denoiser .* \\(9\\) does not match this run's data \\(13\\)"),
    (["--data.seq_len=32"], "data.seq_len of nce.denoiser .* \\(16\\) does not match this run's data \\(32\\)"),
])
def test_nce_training_refuses_a_denoiser_of_other_data(runs, tmp_path, overrides, match):
    cfg = debug_config(tmp_path, "--training.task=nce", f"--nce.denoiser={runs / 'mdlm'}", *overrides)
    with pytest.raises(ConfigError, match=match):
        Trainer(cfg)


def test_nce_training_needs_an_mdlm_denoiser(runs, tmp_path):
    with pytest.raises(ConfigError, match="is a 'ar' run; expected a 'mdlm' run"):
        Trainer(debug_config(tmp_path, "--training.task=nce", f"--nce.denoiser={runs / 'ar'}"))
    with pytest.raises(ConfigError, match="requires nce.denoiser"):
        debug_config(tmp_path, "--training.task=nce")


# ---- NCE training on two ranks: parity with one process, exact resume, learning -------------

NCE_STEPS, NCE_HALF = 16, 8


def nce_overrides(runs) -> list[str]:
    return ["--job.name=nce2", "--training.task=nce", f"--nce.denoiser={runs / 'mdlm'}", "--optim.lr=1e-2",
            "--optim.warmup_steps=0", "--training.global_batch_size=16", "--nce.ess_candidates=0",
            "--model.dropout=0"]  # dropout masks are drawn per rank


def train_nce_and_record(folder, overrides, resume_from, out) -> None:
    """On every rank: NCE steps to NCE_STEPS, checkpointing at NCE_HALF (or resuming from that
    checkpoint); rank 0 writes the losses of the steps it ran."""
    trainer = Trainer(debug_config(folder, *overrides))
    if resume_from is not None:
        if trainer.env.rank == 0:
            shutil.copytree(resume_from, trainer.run_folder.path / "checkpoints")
        torch.distributed.barrier()
        assert trainer.resume() and trainer.step == NCE_HALF
    losses = []
    while trainer.step < NCE_STEPS:
        losses.append(trainer.train_step()["train/loss"])
        if trainer.step == NCE_HALF and resume_from is None:
            trainer.save_checkpoint()
    if trainer.env.rank == 0:
        out.write_text(json.dumps(losses))


def test_nce_on_two_ranks_matches_one_process_resumes_exactly_and_learns(runs, tmp_path):
    overrides = nce_overrides(runs)
    train_nce_and_record(tmp_path / "one", overrides, None, tmp_path / "one.json")
    run_distributed(train_nce_and_record, 2, tmp_path / "two", overrides, None, tmp_path / "two.json")
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert two == pytest.approx(one, rel=1e-5)  # the negatives do not depend on the world size
    assert sum(two[-4:]) / 4 < sum(two[:4]) / 4 - 0.1, two
    run_distributed(train_nce_and_record, 2, tmp_path / "resumed", overrides,
                    tmp_path / "two" / "nce2" / "checkpoints", tmp_path / "resumed.json")
    assert json.loads((tmp_path / "resumed.json").read_text()) == two[NCE_HALF:]  # bit for bit


def test_plot_scalars_draws_the_diagnostics(runs, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import plot_scalars

    out = tmp_path / "figures" / "nce.png"
    plot_scalars.main(["--out", str(out), f"{runs / 'nce'}:train/loss,train/accuracy", f"{runs / 'mdlm'}:train/loss"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="has no scalar 'val/nope'"):
        plot_scalars.main(["--out", str(out), "--overwrite", f"{runs / 'nce'}:val/nope"])
    image = out.read_bytes()
    with pytest.raises(SystemExit) as refused:  # an existing image is replaced only with --overwrite
        plot_scalars.main(["--out", str(out), f"{runs / 'mdlm'}:train/loss"])
    assert refused.value.code == 2 and out.read_bytes() == image
