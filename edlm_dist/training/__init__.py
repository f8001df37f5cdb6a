"""Training: tasks, optimizer and schedule, EMA, the preflight checks and the loop."""

from edlm_dist.training.ema import EMA
from edlm_dist.training.optim import build_lr_scheduler, build_optimizer, lr_multiplier
from edlm_dist.training.tasks import ARTask, MDLMTask, StepNoise, build_task
from edlm_dist.training.trainer import Trainer, TrainingError

__all__ = [
    "ARTask",
    "EMA",
    "MDLMTask",
    "StepNoise",
    "Trainer",
    "TrainingError",
    "build_lr_scheduler",
    "build_optimizer",
    "build_task",
    "lr_multiplier",
]
