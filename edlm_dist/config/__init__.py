"""Configuration: typed sections loaded from TOML with `--section.key=value` overrides."""

from edlm_dist.config.loader import (
    CliArgs,
    ConfigError,
    config_to_dict,
    config_to_toml,
    exit_on_user_error,
    load_config,
    parse_cli,
    save_config,
    validate_config,
)
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
    ParallelConfig,
    SampleConfig,
    TrainingConfig,
)
