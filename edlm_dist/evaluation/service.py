"""The evaluation service, `python -m edlm_dist.eval --watch <run folder>`: it follows a training
run from its own ranks, scoring each committed checkpoint once, and writes the results into its
results folder (`<run>/eval`, or `<eval.output>/<run folder name>`: JSON, and TensorBoard in `tb/`
at the checkpoint's step), never into the training run's own files.

It waits for the run folder to appear (it may start before the training job). Only committed
checkpoints are seen (their COMMITTED marker is written last), so a half-written
one is never read. A checkpoint that cannot be read is tried again after each of
`RETRY_DELAYS_S` (storage errors that pass); one that stays unreadable is damaged: it is reported
(console, TensorBoard text, and a `step_<step>.damaged` record where each result would go) and
skipped, and the service goes on with the next. A checkpoint counts as done when every set has
its JSON or that record: those files are the record, so a restarted service carries on without
repeating work (and `--overwrite`, which would defeat that, is refused by the entry point). It
stops when the run leaves its `finished` (or `failed`) marker and every checkpoint committed
before it is done, or on SIGTERM / SIGINT / SIGUSR1 after the evaluation under way.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tqdm import tqdm

from edlm_dist.config import EvalProgram, load_run_config
from edlm_dist.distributed import DistEnv, PreemptionWatcher, all_gather_object, on_main_rank
from edlm_dist.evaluation.perplexity import EvalModel, LikelihoodEvaluator, build_eval_model, format_result, model_label
from edlm_dist.runs.weights import Checkpoint, WeightsError, run_checkpoints

FINAL_MARKERS = ("finished", "failed")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
RETRY_DELAYS_S = (2.0, 4.0, 8.0)  # the waits before each new try to read a checkpoint that failed


def names_checkpoint(message: str, path: str) -> bool:
    """Whether the one-line error `message` is about the checkpoint folder `path` (or a file in it),
    rather than another checkpoint read with it (the energy's, the denoiser's)."""
    return re.search(re.escape(path.rstrip("/")) + r"(?![^/:;,)\s])", message) is not None


class EvalService:
    """Watches the run folder `eval.watch` and evaluates its checkpoints with `evaluator`."""

    def __init__(self, cfg: EvalProgram, env: DistEnv, evaluator: LikelihoodEvaluator) -> None:
        self.cfg, self.env, self.evaluator = cfg, env, evaluator
        self.run_dir = Path(cfg.eval.watch).expanduser()
        self.evaluated: list[int] = []  # steps this process scored, in order
        self.damaged: list[int] = []  # steps this process found damaged and recorded, in order

    def _open_run(self, watcher: PreemptionWatcher) -> bool:
        """Read the run's config, waiting for the training job to write it; False if told to stop first."""
        config_path = self.run_dir / "config.toml"
        if not config_path.is_file() and self.env.is_main:
            tqdm.write(f"waiting for {config_path} (the training run has not started yet)")
        while not all_gather_object(config_path.is_file())[0]:
            if self._sleep(watcher):
                return False
        self.evaluator.check_results_folder(self.run_dir)
        self.run_config = load_run_config(config_path)
        self.checkpoints = run_checkpoints(self.run_dir, self.run_config)
        self.label = model_label(self.run_config.training.task, self.cfg)
        return True

    def _checkpoint(self, step: int) -> Checkpoint:
        return Checkpoint(self.run_dir, self.checkpoints.path(step), step, self.run_config)

    def _done(self, step: int) -> bool:
        """Whether every set has the result of `step`, or the record that its checkpoint is damaged."""
        ckpt = self._checkpoint(step)
        return all(self.evaluator.result_path(ckpt, self.label, spec).is_file()
                   or self.evaluator.damaged_path(ckpt, self.label, spec).is_file() for spec in self.evaluator.specs)

    def _look(self) -> tuple[list[int], bool]:
        """(committed steps not yet done, whether the run has ended), as rank 0 sees them."""
        if self.env.is_main:
            ended = any((self.run_dir / name).is_file() for name in FINAL_MARKERS)
            todo = [step for step in self.checkpoints.committed_steps() if not self._done(step)]
            view = (todo, ended)
        else:
            view = None
        return all_gather_object(view)[0]

    def run(self) -> list[int]:
        """Evaluate until the run ends or a stop signal arrives; the steps scored, in order."""
        watcher = PreemptionWatcher(STOP_SIGNALS, on_interrupt="stopping after the evaluation under way")
        try:
            if not self._open_run(watcher):
                return self.evaluated
            while True:
                todo, ended = self._look()
                todo = [step for step in todo if step not in self.evaluated + self.damaged]  # each once per process
                for step in todo:
                    self._evaluate(step)
                    if watcher.requested(self.env.device):
                        return self.evaluated
                if todo:
                    continue  # look again at once: more may have been committed meanwhile
                if ended or self._sleep(watcher):
                    return self.evaluated
        finally:
            watcher.restore()
            if self.env.is_main:
                damaged = f", damaged steps {self.damaged} (skipped)" if self.damaged else ""
                tqdm.write(f"evaluation service of {self.run_dir}: scored steps {self.evaluated}{damaged}; results in "
                           f"{self.evaluator.results_folder(self.run_dir)}")

    def _evaluate(self, step: int) -> None:
        em = self._read(self._checkpoint(step))
        if em is None:
            return
        results = self.evaluator.evaluate_model(em)
        self.evaluated.append(step)
        for result in results:
            tqdm.write(format_result(result))

    def _read(self, ckpt: Checkpoint) -> EvalModel | None:
        """The model of `ckpt` on every rank, or None on every rank when it is skipped.

        A read that fails on any rank is tried again, on every rank, after each of
        `RETRY_DELAYS_S`. Then a checkpoint that retention removed meanwhile is skipped, one that
        stays unreadable is recorded as damaged and skipped, and an error about another checkpoint
        read with it (the energy's, the denoiser's: no fault of this one) stops the service.
        """
        tries = len(RETRY_DELAYS_S) + 1
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
            try:
                em, problem = build_eval_model(ckpt, self.cfg, self.env.device), None
            except WeightsError as err:
                em, problem = None, str(err)
            problem = next((p for p in all_gather_object(problem) if p), None)
            if problem is None:
                return em
            if all_gather_object(self.env.is_main and ckpt.step not in self.checkpoints.committed_steps())[0]:
                if self.env.is_main:  # retention removed it while it waited its turn
                    tqdm.write(f"checkpoint {ckpt.path} was pruned before it could be evaluated; skipped")
                return None
            if delay is not None:
                if self.env.is_main:
                    tqdm.write(f"{problem} (try {attempt} of {tries}); trying again in {delay:g} s")
                time.sleep(delay)
        if not names_checkpoint(problem, ckpt.path):
            raise WeightsError(problem)
        records = on_main_rank(lambda: self.evaluator.record_damaged(ckpt, problem, tries), self.env.is_main)
        if self.env.is_main:
            tqdm.write(f"checkpoint {ckpt.path} is damaged and was skipped: {problem} (recorded in "
                       f"{', '.join(str(path) for path in records)})")
        self.damaged.append(ckpt.step)
        return None

    def _sleep(self, watcher: PreemptionWatcher) -> bool:
        """Wait `eval.poll_interval_s`, waking early when a stop signal arrives; whether to stop."""
        deadline = time.monotonic() + self.cfg.eval.poll_interval_s
        while time.monotonic() < deadline and not watcher.received:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return bool(watcher.requested(self.env.device))
