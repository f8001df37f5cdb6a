"""The cluster precision path on the CPU: `runtime.mixed_precision = "bf16"` runs FSDP2 with bf16
compute and fp32 master weights and gradient reduction on 2 gloo ranks, bf16 autocast in one
process, compiled or eager, resumes bit for bit after SIGKILL, and leaves what must stay exact
(optimizer state, EMA, master weights, energies, log Z, sampling noise) in float32/float64.

Tolerances, stated once: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%). Per-step
losses of two bf16 computations that round differently (FSDP2 casts every parameter and so the
residual stream to bf16; autocast casts only the matmul inputs; inductor fuses and rounds at
other places) agree to BF16_REL = 0.5% (seen: 2e-5 over 3 debug steps); bf16 and fp32 losses
over 20 steps, and EDLM bounds, to BF16_VS_FP32_REL = 1% (seen: 3.5e-4 and 2e-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

from cluster_utils import RUN_STEPS, losses_logged, torchrun_standalone
from distributed_utils import run_distributed
from edlm_dist.diffusion import LogLinearSchedule, edlm_nelbo, sample
from edlm_dist.distributed import autocast, compute_dtype
from edlm_dist.energy import AREnergy
from edlm_dist.models import build_model
from edlm_dist.training import Trainer
from run_utils import debug_config

BF16 = "--runtime.mixed_precision=bf16"
STEPS = 3
BF16_REL = 5e-3
BF16_VS_FP32_REL = 1e-2


def test_auto_means_bf16_on_cuda_and_fp32_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compute_dtype("auto", cuda) == torch.bfloat16 and compute_dtype("auto", cpu) == torch.float32
    assert compute_dtype("bf16", cpu) == torch.bfloat16 and compute_dtype("fp32", cuda) == torch.float32


def compute_dtypes_seen(model: torch.nn.Module) -> set[torch.dtype]:
    """Record the dtype of the first linear layer's weight as forward sees it (FSDP2's cast)."""
    seen: set[torch.dtype] = set()
    layer = model.blocks[0].qkv
    layer.register_forward_pre_hook(lambda module, args: seen.add(module.weight.dtype))
    return seen


def exact_state_dtypes(trainer: Trainer) -> dict[str, list[str]]:
    """The dtypes of what must stay float32: master weights, optimizer state, EMA."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    optimizer = {str(local(v).dtype) for state in trainer.optimizer.state.values() for v in state.values()
                 if torch.is_tensor(v) and v.dim() > 0}
    return {"params": sorted({str(local(p).dtype) for p in trainer.model.parameters()}), "optimizer": sorted(optimizer),
            "ema": sorted({str(local(s).dtype) for s in trainer.ema.shadow})}


def bf16_steps(folder: Path, out: Path) -> None:
    """On every rank: STEPS bf16 steps; rank 0 records losses, compute and state dtypes."""
    trainer = Trainer(debug_config(folder, BF16))
    seen = compute_dtypes_seen(trainer.model)
    losses = [trainer.train_step()["train/loss"] for _ in range(STEPS)]
    if trainer.env.rank == 0:
        out.write_text(json.dumps({"losses": losses, "compute": sorted(map(str, seen)), **exact_state_dtypes(trainer)}))


def test_two_rank_fsdp2_bf16_matches_one_process_autocast(tmp_path):
    run_distributed(bf16_steps, 2, tmp_path / "fsdp", tmp_path / "fsdp.json")
    fsdp = json.loads((tmp_path / "fsdp.json").read_text())
    single = Trainer(debug_config(tmp_path / "single", BF16))
    losses = [single.train_step()["train/loss"] for _ in range(STEPS)]
    assert fsdp["losses"] == pytest.approx(losses, rel=BF16_REL)
    assert fsdp["compute"] == ["torch.bfloat16"]  # FSDP2 computes with bf16 parameters
    expected = {"params": ["torch.float32"], "optimizer": ["torch.float32"], "ema": ["torch.float32"]}
    assert {k: fsdp[k] for k in expected} == expected  # fp32 masters, optimizer state and EMA
    assert exact_state_dtypes(single) == expected
    with torch.no_grad(), single.autocast():  # one process: bf16 autocast
        assert single.model(torch.zeros(1, 16, dtype=torch.long)).dtype == torch.bfloat16


def test_bf16_follows_fp32_over_20_steps_and_learns(tmp_path):
    steps = ["--training.steps=20", "--optim.lr=3e-3"]
    runs = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(debug_config(tmp_path / precision, *steps, f"--runtime.mixed_precision={precision}"))
        before = trainer.evaluate()["nelbo_per_token"]
        losses = [trainer.train_step()["train/loss"] for _ in range(20)]
        runs[precision] = (before, losses, trainer.evaluate()["nelbo_per_token"])
    (_, losses32, after32), (before16, losses16, after16) = runs["fp32"], runs["bf16"]
    assert losses16 == pytest.approx(losses32, rel=BF16_VS_FP32_REL)
    assert after16 == pytest.approx(after32, rel=BF16_VS_FP32_REL)
    assert after16 < before16 - 0.1  # bf16 learns: the validation NELBO falls (2.08 -> 1.78)


def test_compiled_bf16_matches_eager_bf16(tmp_path):
    losses = {}
    for compiled in (False, True):
        trainer = Trainer(debug_config(tmp_path / str(compiled), BF16, f"--parallel.compile={str(compiled).lower()}"))
        losses[compiled] = [trainer.train_step()["train/loss"] for _ in range(STEPS)]
    assert losses[True] == pytest.approx(losses[False], rel=BF16_REL)


@pytest.mark.slow
def test_sigkill_under_bf16_then_restart_is_bit_exact(tmp_path):
    straight = torchrun_standalone(tmp_path / "straight", BF16, timeout=240)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = torchrun_standalone(tmp_path / "killed", BF16, "--debug.fault=sigkill", "--debug.fault_step=4", timeout=240)
    assert killed.returncode != 0
    restarted = torchrun_standalone(tmp_path / "killed", BF16, timeout=240)
    assert restarted.returncode == 0 and "at step 3" in restarted.stdout, restarted.stderr[-3000:]
    resumed, reference = losses_logged(restarted.stdout), losses_logged(straight.stdout)
    assert {s: resumed[s] for s in range(4, RUN_STEPS + 1)} == {s: reference[s] for s in range(4, RUN_STEPS + 1)}


# ---- sampling and the EDLM bound under bf16 ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models():
    """A denoiser and an AR energy with random weights (adaLN included), vocabulary 11."""
    cfg = debug_config(Path("unused"))
    torch.manual_seed(0)
    denoiser = build_model("dit", cfg.model, 11).eval()
    ar = build_model("ar", cfg.model, 11).eval()
    for model in (denoiser, ar):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return denoiser, ar


def test_importance_sampling_and_the_edlm_bound_keep_energies_in_float64_under_bf16(tiny_models):
    denoiser, ar = tiny_models
    energy = AREnergy(ar, carry_over=False)
    seen = []

    def spy(x0, xt, t, proposal_logp=None):
        out = energy(x0, xt, t, proposal_logp)
        seen.append((out.dtype, None if proposal_logp is None else proposal_logp.dtype))
        return out

    bf16 = autocast(torch.device("cpu"), torch.bfloat16)
    with torch.no_grad(), bf16:
        assert denoiser(torch.full((1, 16), 11)).dtype == torch.bfloat16  # the networks do run in bf16
        sample(denoiser, batch_size=2, seq_len=16, mask_id=11, steps=4, energy=spy, num_candidates=3,
               generator=torch.Generator().manual_seed(0))
    assert seen and set(seen) == {(torch.float64, torch.float64)}

    x0 = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(1))
    figures = {}
    for name, context in (("fp32", autocast(torch.device("cpu"), torch.float32)), ("bf16", bf16)):
        with torch.no_grad(), context:
            figures[name] = edlm_nelbo(denoiser, energy, x0, mask_id=11, schedule=LogLinearSchedule(), num_proposals=4,
                                       generator=torch.Generator().manual_seed(2))
    assert all(value.dtype == torch.float64 for value in figures["bf16"])
    assert torch.allclose(figures["bf16"].estimate, figures["fp32"].estimate, rtol=BF16_VS_FP32_REL)
