"""The run configuration: frozen dataclasses (schema.py), loaded from YAML and `--set key=value`
overrides (loading.py); the `optimizer:` and `schedule:` keys are those distnn.optim declares
(sections.py).

Every key is checked where it enters: unknown keys, wrong types and out-of-range values raise
ConfigError naming the dotted key, the value and what was expected.
"""

from distnn.config.loading import (
    apply_overrides,
    bundled_config_path,
    check_world_size,
    from_dict,
    load_config,
    model_errors,
    parse_override,
    parse_yaml,
    save_config,
    to_dict,
)
from distnn.config.schema import (
    CHOICES,
    CheckpointConfig,
    CommConfig,
    Config,
    ConfigError,
    DataConfig,
    EarlyStopConfig,
    LogConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
)
from distnn.config.sections import schedule_spec
from distnn.config.transfer import frozen_names, with_absolute_paths

__all__ = ["CHOICES", "CheckpointConfig", "CommConfig", "Config", "ConfigError", "DataConfig",
           "EarlyStopConfig", "LogConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig",
           "apply_overrides", "bundled_config_path", "check_world_size", "from_dict",
           "frozen_names", "load_config", "model_errors", "parse_override", "parse_yaml",
           "save_config", "schedule_spec", "to_dict", "with_absolute_paths"]
