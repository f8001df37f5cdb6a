"""Configuration: typed sections loaded from TOML with `--section.key=value` overrides."""

from edlm_dist.config.schema import (
    MODEL_PRESETS,
    CheckpointConfig,
    Config,
    DataConfig,
    DebugConfig,
    DiffusionConfig,
    JobConfig,
    MetricsConfig,
    ModelConfig,
    OptimConfig,
    SampleConfig,
    TrainingConfig,
)
