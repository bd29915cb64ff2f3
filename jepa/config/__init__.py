"""The experiment configuration: typed dataclasses, loaded from composed YAML files and checked.

    schema.py      the dataclasses, one per section, a docstring under every field
    evaluation.py  the `probe` and `eval` sections (same style)
    load.py        `load(path, overrides)`: `defaults:` composition, dotted overrides, unknown keys
                   refused with a suggestion; `from_dict`, `to_yaml`, `to_dict`
    rules.py       `validate(cfg)`: value rules, one function per section
    sizes.py       ViT sizes by name, encoder depth, image or video model (rules and model factory)
    rope_check.py  RoPE head-dim split and distinct-rows check (used by the rules)
    docs.py        the config reference (docs/configs.md) from the field docstrings

Imports run one way: evaluation and sizes import nothing of this package, schema imports
evaluation, rope_check imports sizes, rules imports rope_check and sizes, load imports schema and
rules, docs imports schema and evaluation.
"""

from jepa.config.evaluation import EvalConfig, ProbeConfig
from jepa.config.load import CONFIG_DIR, from_dict, load, to_dict, to_yaml, with_overrides
from jepa.config.rules import validate
from jepa.config.schema import (
    BlockMaskConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    DeepSpeedConfig,
    EmaConfig,
    HierarchyConfig,
    LaunchConfig,
    LevelConfig,
    LoggingConfig,
    LossSpikeConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    PredictorConfig,
    RopeConfig,
    SourceConfig,
)

__all__ = [
    "CONFIG_DIR", "from_dict", "load", "to_dict", "to_yaml", "validate", "with_overrides", "EvalConfig", "ProbeConfig",
    "BlockMaskConfig", "CheckpointConfig", "Config", "DataConfig", "DeepSpeedConfig", "EmaConfig",
    "HierarchyConfig", "LaunchConfig", "LevelConfig", "LoggingConfig", "LossSpikeConfig", "MaskConfig",
    "ModelConfig", "OptimConfig", "PredictorConfig", "RopeConfig", "SourceConfig",
]
