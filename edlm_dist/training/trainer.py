"""The training loop, written once for any world size (a single process is world size 1).

Per step the global batch and its noise are pure functions of (seed, step); each rank takes
its rows, splits them into micro-batches for gradient accumulation, and steps AdamW. Dropout
is reseeded from (seed, step, rank) every step, so a resumed run repeats the same randomness.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from tqdm import tqdm

from edlm_dist.config import Config, ConfigError, config_to_toml, save_config
from edlm_dist.data import build_dataset
from edlm_dist.diffusion import keyed_generator, seed_from_key
from edlm_dist.distributed import DistEnv, all_reduce_sum, init_distributed
from edlm_dist.models import build_model
from edlm_dist.training.checkpoint import CheckpointManager
from edlm_dist.training.ema import EMA
from edlm_dist.training.metrics import MetricsLogger
from edlm_dist.training.optim import build_lr_scheduler, build_optimizer
from edlm_dist.training.tasks import build_task


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch splits: `world_size` ranks x `accum_steps` micro-batches of `micro`."""

    global_batch: int
    local_batch: int
    micro: int
    accum_steps: int

    @classmethod
    def from_config(cls, cfg: Config, world_size: int) -> BatchPlan:
        global_batch = cfg.training.global_batch_size
        if global_batch % world_size:
            raise ConfigError(
                f"training.global_batch_size ({global_batch}) must be divisible by the world size ({world_size})"
            )
        local = global_batch // world_size
        micro = cfg.training.micro_batch_size or local
        if local % micro:
            raise ConfigError(
                f"training.micro_batch_size ({micro}) must divide the per-rank batch ({local} = "
                f"global_batch_size / world size)"
            )
        return cls(global_batch, local, micro, local // micro)


def configure_determinism(deterministic: bool) -> None:
    """Bit-reproducible kernels when asked (slower; CUDA also needs a cuBLAS workspace setting)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class Trainer:
    """Builds every component from a `Config`, then `run()` trains, evaluates and reports."""

    def __init__(self, cfg: Config, env: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.env = env or init_distributed(cfg.training.device)
        if self.env.world_size > 1:
            raise ConfigError("multi-process training needs the FSDP2 trainer (not yet available); run one process")
        configure_determinism(cfg.debug.deterministic)
        self.run_dir = Path(cfg.job.dump_folder) / cfg.job.name
        self.plan = BatchPlan.from_config(cfg, self.env.world_size)
        self.data = build_dataset(cfg.data)
        self.task = build_task(cfg, self.data.tokenizer.mask_id)
        self.model = build_model(
            self.task.model_kind, cfg.model, self.data.tokenizer.vocab_size, self.env.device, seed=cfg.job.seed
        )
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.optim, cfg.training.steps)
        self.ema = EMA(self.model, cfg.training.ema_decay) if cfg.training.ema_decay > 0 else None
        self.checkpoints = CheckpointManager(self.run_dir / cfg.checkpoint.folder, cfg.checkpoint.keep_last)
        self.logger = MetricsLogger(self.run_dir / "tb", enabled=self.env.is_main and cfg.metrics.tensorboard)
        self.step = 0

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "trainer": {"step": self.step},
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_checkpoint(self) -> None:
        if self.cfg.checkpoint.enable:
            self.checkpoints.save(self.step, self.state_dict(), is_main=self.env.is_main)

    def resume(self) -> bool:
        """Continue from the newest committed checkpoint of the run folder, if there is one."""
        latest = self.checkpoints.latest()
        if latest is None:
            return False
        state = self.state_dict()
        self.checkpoints.load(latest, state)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["trainer"]["step"])
        return True

    # ---- steps -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.env.device.type == "cuda" and self.cfg.training.mixed_precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        """One optimizer step over the global batch of `self.step`; returns its metrics."""
        start = time.perf_counter()
        plan, seq_len = self.plan, self.cfg.data.seq_len
        torch.manual_seed(seed_from_key(self.cfg.job.seed, "dropout", self.step, self.env.rank))
        first = self.env.rank * plan.local_batch
        x0 = self.data.blocks.batch("train", self.step, plan.global_batch)[first : first + plan.local_batch]
        noise = self.task.draw_noise(plan.global_batch, seq_len, self.step)
        x0 = x0.to(self.env.device, non_blocking=True)
        self.model.train()
        nll_total = torch.zeros((), device=self.env.device)
        for m in range(plan.accum_steps):
            rows = slice(m * plan.micro, (m + 1) * plan.micro)
            micro_noise = noise.rows(first + rows.start, first + rows.stop) if noise is not None else None
            with self.autocast():
                nll = self.task.sequence_nll(self.model, x0[rows], micro_noise)
            (nll.sum() / (plan.local_batch * seq_len)).backward()
            nll_total += nll.detach().sum()
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        loss = all_reduce_sum(nll_total).item() / (plan.global_batch * seq_len)
        elapsed = time.perf_counter() - start
        return {
            "train/loss": loss,
            "train/nelbo_per_token": loss,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm,
            "train/tokens_per_s": plan.global_batch * seq_len / elapsed,
            "train/step_time_s": elapsed,
        }

    def _clip_gradients(self) -> float:
        max_norm = self.cfg.training.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm if max_norm > 0 else math.inf)
        return float(norm)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Validation NLL bound (NELBO for mdlm, exact NLL for ar) in nats/token, EMA weights.

        Batch i always uses the same blocks and noise (keyed by i), so figures are comparable
        across evaluations and world sizes; ranks share the batches round-robin.
        """
        cfg = self.cfg.metrics
        totals = torch.zeros(2, dtype=torch.float64, device=self.env.device)
        with self._ema_weights():
            self.model.eval()
            for i in range(self.env.rank, cfg.eval_batches, self.env.world_size):
                x0 = self.data.blocks.batch("val", i, cfg.eval_batch_size).to(self.env.device)
                with self.autocast():
                    nll = self.task.eval_nll(self.model, x0, keyed_generator(self.cfg.job.seed, "eval", i))
                totals += torch.stack([nll.double().sum(), torch.tensor(x0.numel(), device=x0.device)])
        nll_sum, tokens = all_reduce_sum(totals).tolist()
        return nll_sum / tokens

    @torch.no_grad()
    def generate(self, num: int) -> list[str]:
        """Decoded samples from the EMA weights."""
        cfg = self.cfg
        with self._ema_weights():
            self.model.eval()
            tokens = self.task.generate(
                self.model, num, cfg.data.seq_len, cfg.sample.steps, keyed_generator(cfg.job.seed, "samples")
            )
        return [self.data.tokenizer.decode(row.tolist()) for row in tokens.cpu()]

    def _ema_weights(self) -> contextlib.AbstractContextManager:
        return self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext()

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to `training.steps` (resuming if the run folder has a checkpoint), then report."""
        cfg, main = self.cfg, self.env.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.toml")
            self.logger.text("config", "```\n" + config_to_toml(cfg) + "\n```")
        if self.resume() and main:
            tqdm.write(f"resumed from {self.checkpoints.path(self.step)} at step {self.step}")
        bar = tqdm(total=cfg.training.steps, initial=self.step, desc=cfg.job.name, unit="step",
                   disable=not (main and cfg.metrics.progress), dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        while self.step < cfg.training.steps:
            metrics = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
            done = self.step == cfg.training.steps
            if self.step % cfg.metrics.log_interval == 0 or done:
                self.logger.scalars(self.step, metrics)
            if self.step % cfg.metrics.eval_interval == 0 and not done:
                val = self.evaluate()
                self.logger.scalars(self.step, {"val/nelbo_per_token": val})
                if main:
                    tqdm.write(f"step {self.step:>7}  train {metrics['train/loss']:.4f}  val {val:.4f} nats/token")
            if self.step % cfg.checkpoint.interval == 0 or done:
                self.save_checkpoint()
        bar.close()
        return self.report()

    def report(self) -> dict[str, Any]:
        """Final validation figure against the data's reference figures, plus samples."""
        val = self.evaluate()
        self.logger.scalars(self.step, {"val/nelbo_per_token": val})
        blocks = self.data.blocks
        floor, unigram = blocks.entropy_per_token(), blocks.unigram_nll_per_token()
        summary = {
            "step": self.step,
            "task": self.cfg.training.task,
            "val_nll_per_token": val,
            "entropy_floor_per_token": floor,
            "unigram_nll_per_token": unigram,
            "gap_closed": (unigram - val) / (unigram - floor) if math.isfinite(floor) else None,
            "samples": self.generate(self.cfg.sample.num_samples),
        }
        if self.env.is_main:
            self.logger.text("samples", "\n\n".join(summary["samples"]), self.step)
            _atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            print(format_report(summary))
        self.logger.close()
        return summary


def format_report(summary: dict[str, Any]) -> str:
    """The end-of-run figures and samples, as printed on the console."""
    bound = "validation NELBO" if summary["task"] == "mdlm" else "validation NLL"
    lines = [
        f"{bound + ':':<26}{summary['val_nll_per_token']:.4f} nats/token",
        f"{'entropy floor:':<26}{summary['entropy_floor_per_token']:.4f} nats/token",
        f"{'unigram (context-free):':<26}{summary['unigram_nll_per_token']:.4f} nats/token",
    ]
    if summary["gap_closed"] is not None:
        lines.append(f"{'gap closed:':<26}{100 * summary['gap_closed']:.1f}% of unigram -> floor")
    lines.append("samples:")
    lines += [f"  [{i}] " + text.strip().replace("\n", " | ") for i, text in enumerate(summary["samples"])]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
