"""The run infrastructure every program shares, beneath training and evaluation: the run folder
(config, markers, lock), DCP checkpoints, loading a run's weights, TensorBoard output, device
figures, and memory plans with the check that a program fits its device."""

from edlm_dist.runs.checkpoint import CheckpointError, CheckpointManager
from edlm_dist.runs.folder import RunFolder
from edlm_dist.runs.tensorboard import MetricsLogger
from edlm_dist.runs.weights import Checkpoint, WeightsError, find_checkpoint, load_weights

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "MetricsLogger",
    "RunFolder",
    "WeightsError",
    "find_checkpoint",
    "load_weights",
]
