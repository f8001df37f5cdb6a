"""What a run does about a step that goes non-finite, so that nothing non-finite is ever kept.

Two ways a step goes wrong: its loss or gradient norm is not finite (the update is skipped; the
weights stay good), or the update itself made the model, optimizer state or EMA non-finite (an
overflow; the live state is lost). For the second, `training.on_nonfinite` decides: "rollback"
reloads the last committed checkpoint and replays from it, skipping the batch of the bad step;
"stop" ends the run at once. Skipped batches in a row are limited by `training.max_bad_steps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edlm_dist.config.schema import TrainingConfig


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a diverged loss); the message says why and what was saved."""

    user_error = True


@dataclass
class DivergenceGuard:
    """The bookkeeping of non-finite steps of one process (its skipped batches, by step index)."""

    policy: str
    limit: int
    in_a_row: int = 0  # skipped batches since the last good update
    rollbacks: int = 0
    skipped_batches: set[int] = field(default_factory=set)  # never trained on again after a rollback

    @classmethod
    def from_config(cls, cfg: TrainingConfig) -> DivergenceGuard:
        return cls(cfg.on_nonfinite, cfg.max_bad_steps)

    def skips(self, index: int) -> bool:
        """Whether the batch of step index `index` is skipped (its update was rolled back)."""
        return index in self.skipped_batches

    def good_update(self) -> None:
        self.in_a_row = 0

    def bad_loss(self, step: int) -> str | None:
        """A step skipped for its non-finite loss or gradient norm: why the run stops, or None."""
        self.in_a_row += 1
        if self.in_a_row < self.limit:
            return None
        return f"loss or gradient norm was not finite for {self.in_a_row} steps in a row (up to step {step})"

    def bad_update(self, step: int, tensor: str, newest: str | None) -> str | None:
        """The update of `step` made `tensor` non-finite; `newest` is the newest committed checkpoint.
        Why the run stops, or None after recording the rollback (the caller reloads `newest`)."""
        self.in_a_row += 1
        what = f"the update of step {step} made {tensor} non-finite"
        kept = f"nothing non-finite was saved; the newest good checkpoint is {newest}" if newest else \
            "nothing non-finite was saved, and no checkpoint was committed yet"
        if self.policy == "stop":
            return f"{what}; training.on_nonfinite = 'stop' ends the run: {kept}"
        if newest is None:
            return f"{what} and there is no checkpoint to roll back to ({kept}); lower optim.lr or set a smaller " \
                   f"checkpoint.interval"
        if self.in_a_row >= self.limit:
            return f"{what}; {self.in_a_row} steps in a row went wrong (training.max_bad_steps = {self.limit}): " \
                   f"{kept}; lower optim.lr or check the data"
        self.skipped_batches.add(step - 1)
        self.rollbacks += 1
        return None
