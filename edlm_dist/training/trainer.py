"""The training loop, written once for any world size (a single process is world size 1).

Per step the global batch and its noise are pure functions of (seed, step); each rank takes
its rows, splits them into micro-batches for gradient accumulation, and steps AdamW. Dropout
is reseeded from (seed, step, rank) every step, so a resumed run repeats the same randomness.
With more than one process the model is built on the meta device, parallelised
(activation checkpointing -> compile -> FSDP2) and only then materialised.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from edlm_dist.config import ConfigError, TrainProgram, config_to_toml
from edlm_dist.data import BatchPlan, DataError, build_dataset
from edlm_dist.data.integrity import verify_shards
from edlm_dist.diffusion import keyed_generator, seed_from_key
from edlm_dist.distributed import (
    CollectiveError,
    Heartbeat,
    PreemptionWatcher,
    Watchdog,
    all_gather_object,
    all_reduce_sum,
    autocast,
    barrier,
    build_mesh,
    compute_dtype,
    first_nonfinite,
    init_runtime,
    is_collective_failure,
    on_main_rank,
    parallelize_model,
    reshard,
    set_gradient_sync,
)
from edlm_dist.models import build_model, model_tokens
from edlm_dist.runs.checkpoint import CheckpointManager, checkpoint_folder
from edlm_dist.runs.state_blob import encode_state, read_loader_states, stored_integer
from edlm_dist.training.divergence import DivergenceGuard, TrainingError
from edlm_dist.training.ema import EMA
from edlm_dist.training.faults import FaultInjector
from edlm_dist.energy.loading import continued_model_config, initial_weights_run, nce_model_config
from edlm_dist.runs.weights import (
    Checkpoint,
    WeightsError,
    check_same_data,
    checkpoint_vocab_size,
    load_weights,
    read_weights,
    run_of_task,
)
from edlm_dist.runs.device_stats import device_peak_flops, peak_memory_gib, reset_peak_memory
from edlm_dist.runs.memory_check import check_training_memory
from edlm_dist.runs.tensorboard import MetricsLogger
from edlm_dist.training.optim import build_lr_scheduler, build_optimizer, follow_config
from edlm_dist.training.preflight import check_command
from edlm_dist.training.report import format_report, run_summary
from edlm_dist.runs.folder import RunFolder
from edlm_dist.training.tasks import build_task


VERIFIED_SHARDS = "verified_shards.json"  # the shards of the corpus this run has checked (data.integrity)


def configure_determinism(deterministic: bool) -> None:
    """Bit-reproducible kernels when asked (slower; CUDA also needs a cuBLAS workspace setting)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class TermSums:
    """Running sums and counts of per-example terms (NaN entries not counted), averaged over
    all ranks by `means()` (a collective: every rank must have added the same term names)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, values in terms.items():
            values = values.detach().double()
            counted = ~values.isnan()
            pair = torch.stack([torch.where(counted, values, 0.0).sum(), counted.sum().double()])
            self.sums[name] = self.sums.get(name, torch.zeros(2, dtype=torch.float64, device=self.device)) + pair

    def means(self) -> dict[str, float]:
        names = sorted(self.sums)
        totals = all_reduce_sum(torch.stack([self.sums[n] for n in names])).tolist() if names else []
        return {name: total / count if count else math.nan for name, (total, count) in zip(names, totals)}


def _full_value(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class Trainer:
    """Builds every component from a `TrainProgram`, then `run()` trains, evaluates and reports."""

    def __init__(self, cfg: TrainProgram) -> None:
        self.cfg = cfg
        par = cfg.parallel
        self.env = init_runtime(cfg.runtime)
        check_training_memory(cfg, self.env.world_size, self.env.device)  # refused before anything is built
        configure_determinism(cfg.debug.deterministic)
        self.run_folder = RunFolder(Path(cfg.job.dump_folder) / cfg.job.name)
        self.faults = FaultInjector(cfg.debug, self.env.rank, self.env.world_size, self.run_folder.path)
        self.heartbeat: Heartbeat | None = None  # from run(), once every rank has joined
        self.plan = BatchPlan.from_config(cfg.training, self.env.world_size, self.env.rank)
        self.mesh = build_mesh(par, self.env.world_size, self.env.device.type)
        self.compute_dtype = compute_dtype(cfg.runtime.mixed_precision, self.env.device)
        # FSDP2 casts the parameters itself; one process autocasts
        self.autocast_dtype = self.compute_dtype if self.mesh is None else torch.float32
        self.data = build_dataset(cfg.data)
        self.loader = self.data.train_loader(self.plan, cfg.data.allow_fingerprint_mismatch)
        prepare = partial(parallelize_model, cfg=par, mesh=self.mesh,
                          param_dtype=self.compute_dtype)
        ckpt = cfg.checkpoint
        self.checkpoints = CheckpointManager(checkpoint_folder(self.run_folder.path, ckpt.folder), ckpt.keep_last,
                                             ckpt.keep_every, ckpt.async_save,
                                             write_hook=self.faults.write_hook)
        denoiser = self.denoiser_ckpt = None
        if cfg.training.task == "nce":
            denoiser, self.denoiser_ckpt = self._frozen_denoiser(prepare)
        initial = self._initial_weights()
        self.task = build_task(cfg, model_tokens(cfg.model, self.data.tokenizer.vocab_size), denoiser)
        self.model = build_model(
            self.task.model_kind, cfg.model, self.data.tokenizer.vocab_size, self.env.device, seed=cfg.job.seed,
            prepare=prepare,
        )
        if self.denoiser_ckpt is not None:
            read_weights(self.model, self.denoiser_ckpt, self.cfg.nce.weights, partial=True)
        if initial is not None and self.checkpoints.latest() is None:  # a resume reads its own weights
            read_weights(self.model, initial, "auto")
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.optim, cfg.training.steps)
        self.ema = EMA(self.model, cfg.training.ema_decay) if cfg.training.ema_decay > 0 else None
        self.logger = MetricsLogger(self.run_folder.path / "tb", enabled=self.env.is_main and cfg.metrics.tensorboard)
        self.flops_per_token = self.model.flops_per_token(cfg.data.seq_len)
        self.peak_flops = device_peak_flops(self.env.device)
        self.step = 0
        self.guard = DivergenceGuard.from_config(cfg.training)
        self.skipped_steps = 0
        self.nonfinite: str | None = None  # the first non-finite tensor after the last update, if any

    def _frozen_denoiser(self, prepare: Callable[[torch.nn.Module], None]) -> tuple[torch.nn.Module, Checkpoint]:
        """NCE's proposal: the MDLM of `nce.denoiser`, parallelised like the trained model and
        frozen; checked against the data it will see."""
        cfg = self.cfg
        try:
            ckpt = run_of_task(cfg.nce.denoiser, "mdlm", "nce.denoiser")
            check_same_data(ckpt, f"nce.denoiser {ckpt.path}", self.data.tokenizer.vocab_size, cfg.data.seq_len,
                            "this run's data")
        except WeightsError as err:
            raise ConfigError(str(err)) from None
        if cfg.model != nce_model_config(cfg, ckpt.config):
            raise ConfigError(f"[model] of this NCE run is not its nce.denoiser's ({ckpt.run_dir}): resolve the "
                              "config first (edlm_dist.energy.loading.resolve_model_config, as the train entry point does)")
        denoiser, _ = load_weights(ckpt, self.cfg.nce.weights, device=self.env.device, prepare=prepare)
        return denoiser.requires_grad_(False), ckpt

    def _initial_weights(self) -> Checkpoint | None:
        """The run of `training.init_from` (continued training), checked against this run's model and data."""
        ckpt = initial_weights_run(self.cfg)
        if ckpt is None:
            return None
        if self.cfg.model != continued_model_config(self.cfg, ckpt.config):
            raise ConfigError(f"[model] of this run is not its training.init_from's ({ckpt.run_dir}): resolve the config "
                              "first (edlm_dist.energy.loading.resolve_model_config, as the train entry point does)")
        ids = checkpoint_vocab_size(ckpt)
        if ids != self.data.tokenizer.vocab_size:
            raise ConfigError(f"training.init_from {ckpt.path} has {ids} token ids, but this run's data "
                              f"(data.tokenizer = {self.cfg.data.tokenizer!r}) has {self.data.tokenizer.vocab_size}")
        return ckpt

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: tensors only (DCP stores the optimizer's hyperparameters as
        torch.save items of plain values), so reading one back runs no code."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        counters = {"step": self.step, "skipped_steps": self.skipped_steps, "denoiser_step": self._denoiser_step()}
        state = {
            "model": model_state,
            "optimizer": optim_state,
            "trainer": {key: torch.tensor(value, dtype=torch.int64) for key, value in counters.items()},
            # every rank's loader state (it may hold dataloader internals), the same blob on every rank
            "data": {"states": encode_state(all_gather_object(self.loader.state_dict()))},
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _denoiser_step(self) -> int:
        """The step of NCE's frozen denoiser (-1 for other tasks), saved to catch a swapped denoiser on resume."""
        return self.denoiser_ckpt.step if self.denoiser_ckpt is not None else -1

    def loadable_state(self, checkpoints: CheckpointManager, step: int) -> dict[str, Any]:
        """A state to fill from the checkpoint of `step` in `checkpoints`: `state_dict()` with the
        loaders' blob at its stored size (a checkpoint of before it was a pickle: any size)."""
        state = self.state_dict()
        blob_shape = checkpoints.stored_shapes(step).get("data.states", (0,))
        state["data"]["states"] = torch.empty(blob_shape, dtype=torch.uint8)
        return state

    def named_state(self) -> list[tuple[str, torch.Tensor]]:
        """Every tensor a checkpoint keeps of the model: parameters, optimizer state, EMA."""
        named = [(f"model.{name}", p) for name, p in self.model.named_parameters()]
        for name, p in self.model.named_parameters():
            named += [(f"optimizer.{name}.{key}", v) for key, v in self.optimizer.state.get(p, {}).items()
                      if isinstance(v, torch.Tensor)]
        if self.ema is not None:
            named += [(f"ema.{name}", shadow) for name, shadow in zip(self.ema.names, self.ema.shadow)]
        return named

    def save_checkpoint(self) -> None:
        """Commit the state of `self.step`, which must be finite (checked again: nothing non-finite is ever kept)."""
        if not self.cfg.checkpoint.enable:
            return
        bad = first_nonfinite(self.named_state())
        if bad is not None:
            raise TrainingError(f"step {self.step}: {bad} is not finite; the checkpoint is not written (the newest good "
                                f"one is {self._newest_checkpoint()})")
        self.checkpoints.save(self.step, self.state_dict(), is_main=self.env.is_main)

    def _newest_checkpoint(self) -> str | None:
        latest = self.checkpoints.latest()
        return None if latest is None else self.checkpoints.path(latest)

    def resume(self) -> bool:
        """Continue from the newest committed checkpoint of the run, if there is one."""
        latest = self.checkpoints.latest()
        if latest is None:
            return False
        path = self.checkpoints.path(latest)
        state = self.loadable_state(self.checkpoints, latest)
        self.checkpoints.load(latest, state)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        if self.ema is not None:
            updates = stored_integer(state["ema"]["num_updates"], f"{path} (item ema.num_updates)")
            self.ema.load_state_dict({**state["ema"], "num_updates": updates})
        counters = {key: stored_integer(value, f"{path} (item trainer.{key})") for key, value in state["trainer"].items()}
        if counters["denoiser_step"] != self._denoiser_step():
            raise ConfigError(
                f"checkpoint {path} was trained against the denoiser's step "
                f"{counters['denoiser_step']}, but nce.denoiser now gives step {self._denoiser_step()}"
            )
        self.step, self.skipped_steps = counters["step"], counters["skipped_steps"]
        loader_states = read_loader_states(state["data"]["states"], f"{path} (item data.states)")
        # a state saved without the loader's step (raw text, before loaders counted) takes the trainer's
        self.loader.load_state_dict([{"step": self.step, **s} for s in loader_states])
        # the optimizer and its schedule follow this run's config, which may have changed since the save
        follow_config(self.optimizer, self.cfg.optim)
        self.scheduler = build_lr_scheduler(self.optimizer, self.cfg.optim, self.cfg.training.steps, self.step)
        bad = first_nonfinite(self.named_state())
        if bad is not None:  # committed before commits were checked
            raise TrainingError(f"checkpoint {path} holds non-finite values (first: {bad}); it cannot be resumed: "
                                f"move it out of {self.checkpoints.folder} to resume from the one before")
        return True

    # ---- steps -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.env.device, self.autocast_dtype)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over the global batch of `self.step`; returns its metrics.

        A non-finite loss or gradient norm skips the update (the step still advances, so the
        next batch is fresh). After an update, the model, optimizer state and EMA are checked
        (one fused, all-reduced check): `self.nonfinite` names the first non-finite tensor, for
        the loop to roll back or stop. A batch skipped after a rollback is drawn and not trained on.
        """
        start = time.perf_counter()
        self._beat(self.step + 1, "step")
        self.nonfinite = None
        plan, env = self.plan, self.env
        batch = self.loader.next_batch().to(env.device)
        if batch.step != self.step:
            raise RuntimeError(f"the data loader gave the batch of step {batch.step} at step {self.step}")
        if self.guard.skips(self.step):
            self.skipped_steps += 1
            return self._advance(start, {}, trained=False)
        noise = self.task.draw_noise(batch)
        data_time = time.perf_counter() - start
        # after the data: a dataloader draws from the global RNG when it starts its iterator
        torch.manual_seed(seed_from_key(self.cfg.job.seed, "dropout", self.step, env.rank))
        self.model.train()
        sums = TermSums(env.device)
        for m, micro in enumerate(batch.split(plan.micro)):
            micro_noise = noise.select(micro.rows) if noise is not None else None
            set_gradient_sync(self.model, m == plan.accum_steps - 1)
            with self.autocast():
                terms = self.task.train_terms(self.model, micro.tokens, micro_noise)
            (terms["loss"].sum() / plan.local_batch).backward()
            sums.add(terms)
        self.faults.mid_step(self.step + 1)
        self._beat(self.step + 1, "loss all-reduce")
        self.faults.in_all_reduce(self.step + 1)
        means = sums.means()
        grad_norm = self._clip_gradients()
        if math.isfinite(means["loss"]) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.faults.after_update(self.step + 1, self.model)
            if self.ema is not None:
                self.ema.update(self.model)
            self._beat(self.step + 1, "state check")
            self.nonfinite = first_nonfinite(self.named_state())
        else:
            self.skipped_steps += 1
        metrics = {
            **{f"train/{name}": value for name, value in means.items()},
            "train/grad_norm": grad_norm,
            "train/data_wait_s": data_time,
            "system/peak_memory_gib": peak_memory_gib(env.device),
        }
        return self._advance(start, metrics, trained=True)

    def _advance(self, start: float, metrics: dict[str, float], trained: bool) -> dict[str, float]:
        """Finish the step begun at `start` and complete its metrics (throughput when it `trained`)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.cfg.debug.step_sleep_s:
            time.sleep(self.cfg.debug.step_sleep_s)
        metrics = {**metrics, "train/lr": self.scheduler.get_last_lr()[0], "train/skipped_steps": self.skipped_steps,
                   "train/rollbacks": self.guard.rollbacks}
        if trained:
            elapsed = time.perf_counter() - start
            tokens_per_s = self.plan.global_batch * self.cfg.data.seq_len / elapsed
            metrics.update({"train/tokens_per_s": tokens_per_s, "train/tokens_per_s_per_device": tokens_per_s /
                            self.env.world_size, "train/step_time_s": elapsed})
            if self.peak_flops:
                metrics["train/mfu"] = self.flops_per_token * tokens_per_s / self.env.world_size / self.peak_flops
        return metrics

    def _clip_gradients(self) -> float:
        """Clip the global gradient norm (over all shards) and return it before clipping."""
        max_norm = self.cfg.training.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm if max_norm > 0 else math.inf)
        return float(_full_value(norm))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation figures of the task with the EMA weights, averaged over the validation
        sequences: the NELBO (mdlm) or exact NLL (ar) in nats/token; NCE loss, accuracy, energies
        and ESS (nce).

        Batch i always uses the same blocks and noise (keyed by i), so figures are comparable
        across evaluations and world sizes. Ranks share the batches round-robin and all run the
        same number of forward passes (FSDP gathers parameters collectively), padding the last
        round with uncounted repeats.
        """
        cfg, env = self.cfg.metrics, self.env
        sums = TermSums(env.device)
        with self._ema_weights():
            self.model.eval()
            for r in range(math.ceil(cfg.eval_batches / env.world_size)):
                i = r * env.world_size + env.rank
                x0 = self.data.blocks.batch("val", i % cfg.eval_batches, cfg.eval_batch_size).to(env.device)
                with self.autocast():
                    terms = self.task.eval_terms(self.model, x0, i % cfg.eval_batches)
                if i >= cfg.eval_batches:  # a padding repeat: add nothing, but the same names on every rank
                    terms = {name: torch.full_like(values, math.nan) for name, values in terms.items()}
                sums.add(terms)
        return sums.means()

    @torch.no_grad()
    def generate(self, num: int) -> list[str]:
        """Decoded samples from the EMA weights (the same on every rank: one shared generator)."""
        cfg = self.cfg
        with self._ema_weights():
            self.model.eval()
            with self.autocast():
                tokens = self.task.generate(
                    self.model, num, cfg.data.seq_len, cfg.sample.steps, keyed_generator(cfg.job.seed, "samples")
                )
        return [self.data.tokenizer.decode(row.tolist()) for row in tokens.cpu()]

    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[None]:
        """Evaluate with the EMA weights swapped in (the live ones afterwards)."""
        if self.ema is None:
            yield
            return
        reshard(self.model)
        with self.ema.swapped_in(self.model):
            try:
                yield
            finally:
                reshard(self.model)

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to `training.steps` (resuming from the run's latest checkpoint), then report.

        Before anything in the run folder changes, rank 0 takes its lock and checks the command
        against the run (`claim`); then the checkpoint is loaded and the data verified, and only
        then are the config and markers written. An error a restart would repeat (user errors:
        an unreadable checkpoint, corrupt data, a full or read-only store, a diverged loss)
        leaves the `failed` marker when the store still takes it. On SIGTERM/SIGUSR1/SIGINT
        every rank finishes the step, a checkpoint is written, the `preempted` marker is left and
        the run returns early; a collective that lost a peer or timed out raises a
        CollectiveError naming the ranks the others waited for (a watchdog thread says it
        earlier), and leaves the `failed` marker saying so (written by rank 0, or by the others
        when rank 0 is the one that stopped).
        """
        changes = self.claim()
        try:
            return self._run(changes)
        except BaseException as err:
            if self.heartbeat is not None and isinstance(err, RuntimeError) and is_collective_failure(err):
                explained = CollectiveError.explain(err, self.heartbeat)  # also inside a checkpoint save
                self._mark_hang(str(explained), explained.stuck)
                raise explained from err
            if getattr(type(err), "user_error", False) and self.env.is_main:
                self.run_folder.mark_failed(self._step_reached(), str(err))
            raise
        finally:
            if self.env.is_main:
                self.run_folder.lock.release()

    def claim(self) -> list[tuple[str, Any, Any]]:
        """Rank 0 locks the run folder and checks this command against the run: keys that cannot
        change on resume, `training.steps` not behind the latest checkpoint, writable storage.
        Every rank raises if it fails, with nothing in the run folder changed. The config changes
        since the run's last start are returned."""
        return on_main_rank(self._claim_on_main, self.env.is_main)

    def _claim_on_main(self) -> list[tuple[str, Any, Any]]:
        created = not self.run_folder.path.exists()
        try:
            self.run_folder.create()
            self.run_folder.lock.acquire()
            try:
                return check_command(self.cfg, self.run_folder, self.checkpoints)
            except BaseException:
                self.run_folder.lock.release()
                raise
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    self.run_folder.path.rmdir()  # a new run that could not start leaves no empty folder
            raise

    def verify_data(self) -> None:
        """Check the corpus's shards against their manifest before training on them, split over
        the ranks and once per run: the shards found good are recorded beside the run. A damaged
        one stops the run, or with `data.on_error = "skip"` is read with its damage skipped."""
        shards = self.data.shards
        if not (shards and self.cfg.data.verify_shards):
            return
        recorded = all_gather_object(self.run_folder.read_json(VERIFIED_SHARDS) if self.env.is_main else None)[0]
        rank, world = self.env.rank, self.env.world_size
        progress = self.env.is_main and self.cfg.metrics.progress
        good, problems = verify_shards(shards[rank::world], recorded or {}, progress=progress)
        gathered = all_gather_object((good, problems))
        problems = [p for _, part in gathered for p in part]
        if problems:
            more = f" (and {len(problems) - 1} more shards)" if len(problems) > 1 else ""
            if self.cfg.data.on_error == "raise":
                raise DataError(f"{problems[0]}{more}; prepare the corpus again, or set data.on_error = 'skip' to "
                                f"train on the rest (damaged parts read as EOS and counted)")
            if self.env.is_main:
                tqdm.write(f"warning: {problems[0]}{more}; data.on_error = 'skip': its damaged parts are read as EOS "
                           f"and counted (data/skipped_records)")
        if self.env.is_main:
            self.run_folder.write_json(VERIFIED_SHARDS, {url: v for part, _ in gathered for url, v in part.items()})

    def _run(self, changes: list[tuple[str, Any, Any]]) -> dict[str, Any]:
        cfg, main = self.cfg, self.env.is_main
        resumed = self.resume()
        self.verify_data()
        if main:
            kept = self.run_folder.record_config(cfg, self.step)
            self.run_folder.clear_markers()
            self.logger.text("config", "```\n" + config_to_toml(cfg) + "\n```", self.step)
            if resumed:
                tqdm.write(f"resumed from {self.checkpoints.path(self.step)} at step {self.step}")
            if changes:
                shown = ", ".join(f"{key} {was!r} -> {now!r}" for key, was, now in changes)
                self.logger.text("config_changes", shown, self.step)
                tqdm.write(f"config changed at step {self.step}: {shown}" + (f" (the old one is kept as {kept})" if kept else ""))
        barrier()
        watcher = PreemptionWatcher()
        self.heartbeat = Heartbeat.of_process_group()
        self._beat(self.step, "start")
        watchdog = Watchdog(self.heartbeat, cfg.runtime.collective_timeout_s, on_hang=self._mark_hang) \
            if self.heartbeat else None
        try:
            preempted = self._train_loop(watcher)
            self.checkpoints.wait()  # an async last save fails here, with the marker, not in close()
        finally:
            watcher.restore()
            if watchdog is not None:
                watchdog.stop()
            self.checkpoints.close()
            self.loader.close()
        if preempted:
            if main:
                self.run_folder.mark("preempted", step=self.step, signal=signal.Signals(preempted).name)
                tqdm.write(f"pre-empted by {signal.Signals(preempted).name}: checkpoint at step {self.step}")
            return {"step": self.step, "preempted": True}
        return self.report()

    def _train_loop(self, watcher: PreemptionWatcher) -> int:
        """Steps until done (returns 0) or until a rank got a pre-emption signal (returns it)."""
        cfg, main = self.cfg, self.env.is_main
        bar = tqdm(total=cfg.training.steps, initial=self.step, desc=cfg.job.name, unit="step",
                   disable=not (main and cfg.metrics.progress), dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        reset_peak_memory(self.env.device)
        try:
            while self.step < cfg.training.steps:
                metrics = self.train_step()
                self._beat(self.step, "step boundary")
                self.checkpoints.poll()  # an async save whose write has finished is committed now
                bad = self._went_wrong(metrics)
                done = self.step == cfg.training.steps
                if bad or self.step % cfg.metrics.log_interval == 0 or done:
                    self._log(metrics)  # a bad step always, NaN as NaN
                if bad and self._recover():
                    bar.n = self.step  # rolled back
                    bar.refresh()
                    continue
                bar.update(1)
                if "train/loss" in metrics:
                    bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
                if self.step % cfg.metrics.eval_interval == 0 and not done:
                    self._log({f"val/{name}": value for name, value in self.evaluate().items()})
                signum = watcher.requested(self.env.device)
                if self.step % cfg.checkpoint.interval == 0 or done or signum:
                    self._beat(self.step, "checkpoint")
                    self.save_checkpoint()
                if signum:
                    return signum
        finally:
            bar.close()
        return 0

    def _mark_hang(self, reason: str, stuck: list[int]) -> None:
        """Leave the `failed` marker for a hang or a lost peer: rank 0 writes it, or every other
        rank when rank 0 is among those that stopped."""
        if self.env.is_main or 0 in stuck:
            self.run_folder.mark_failed(self._step_reached(), reason)

    def _step_reached(self) -> int:
        """The step the run has reached: this process's, or before it resumed, its latest checkpoint's."""
        if self.step:
            return self.step
        with contextlib.suppress(Exception):  # the storage itself may be what failed
            return self.checkpoints.latest() or 0
        return 0

    def _beat(self, step: int, phase: str) -> None:
        """Post this rank's progress (with more than one rank): it entered `phase` of step `step`."""
        if self.heartbeat is not None:
            self.heartbeat.beat(step, phase)

    def _log(self, metrics: dict[str, float]) -> None:
        skipped = torch.tensor(float(self.loader.skipped_records()), device=self.env.device)
        metrics = {**metrics, "data/skipped_records": all_reduce_sum(skipped).item()}
        self.logger.scalars(self.step, metrics)
        if self.env.is_main:
            tqdm.write(f"step {self.step:>7}  " + "  ".join(
                f"{tag.split('/')[-1]} {value:.4g}" for tag, value in metrics.items()
                if tag in ("train/loss", f"val/{self.task.headline}", "train/lr", "train/grad_norm", "train/tokens_per_s",
                           "train/mfu")
            ))

    def _went_wrong(self, metrics: dict[str, float]) -> bool:
        """Whether the step just taken had a non-finite loss, gradient norm or update."""
        finite = all(math.isfinite(metrics.get(f"train/{name}", 0.0)) for name in ("loss", "grad_norm"))
        if finite and self.nonfinite is None:
            if "train/loss" in metrics:  # trained, not a skipped batch
                self.guard.good_update()
            return False
        return True

    def _recover(self) -> bool:
        """After a step that went wrong: whether the state was rolled back to the last commit (a
        non-finite update); raises TrainingError when the run stops instead."""
        if self.nonfinite is None:  # the update was skipped: the weights are still good
            stop = self.guard.bad_loss(self.step)
            if stop:
                self.save_checkpoint()
                saved = f"saved at {self.checkpoints.path(self.step)}" if self.cfg.checkpoint.enable else \
                    "not saved (checkpoint.enable = false)"
                raise TrainingError(f"{stop}; the last good weights are {saved}")
            return False
        stop = self.guard.bad_update(self.step, self.nonfinite, self._newest_checkpoint())
        if stop:
            raise TrainingError(stop)
        failed_step, tensor = self.step, self.nonfinite
        self.resume()
        note = (f"step {failed_step}: the update made {tensor} non-finite; rolled back to step {self.step} "
                f"(training.on_nonfinite = 'rollback'), replaying without the batch of step {failed_step}")
        self.logger.text("rollbacks", note, failed_step)
        if self.env.is_main:
            tqdm.write(note)
        return True

    def report(self) -> dict[str, Any]:
        """Final validation figure against the data's reference figures, plus samples."""
        val = self.evaluate()
        self.logger.scalars(self.step, {f"val/{name}": value for name, value in val.items()})
        reference = self.data.blocks if self.task.model_kind != "energy" else None
        summary = run_summary(self.step, self.cfg.training.task, val, self.task.headline, reference,
                              self.skipped_steps, self.generate(self.cfg.sample.num_samples))
        if self.env.is_main:
            self.logger.text("samples", "\n\n".join(summary["samples"]), self.step)
            self.run_folder.write_json("summary.json", summary)
            self.run_folder.mark("finished", step=self.step)
            print(format_report(summary))
        return summary
