"""Training: tasks, optimizer and schedule, EMA, checkpoints, metrics and the loop."""

from edlm_dist.training.checkpoint import CheckpointError, CheckpointManager
from edlm_dist.training.ema import EMA
from edlm_dist.training.loading import Checkpoint, WeightsError, find_checkpoint, load_weights
from edlm_dist.training.optim import build_lr_scheduler, build_optimizer, lr_multiplier
from edlm_dist.training.tasks import ARTask, MDLMTask, StepNoise, build_task
from edlm_dist.training.run_folder import RunFolder
from edlm_dist.training.trainer import BatchPlan, Trainer, TrainingError

__all__ = [
    "ARTask",
    "BatchPlan",
    "CheckpointError",
    "Checkpoint",
    "CheckpointManager",
    "EMA",
    "MDLMTask",
    "RunFolder",
    "StepNoise",
    "Trainer",
    "TrainingError",
    "WeightsError",
    "build_lr_scheduler",
    "build_optimizer",
    "build_task",
    "find_checkpoint",
    "load_weights",
    "lr_multiplier",
]
