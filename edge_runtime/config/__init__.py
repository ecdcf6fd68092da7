"""The configuration: the schema (:mod:`.schema`) and its loader (:mod:`.load`).

The names most callers need are re-exported here: ``from edge_runtime.config import Config,
load_config``.
"""

from edge_runtime.config.load import (
    apply_override,
    format_errors,
    load_config,
    parse_toml,
    parse_value,
    read_toml,
    validate,
)
from edge_runtime.config.schema import (
    BUNDLED_MODELS,
    DEMO_CONFIG,
    PACKAGE_DIR,
    CascadeConfig,
    Config,
    DefaultsConfig,
    DeviceConfig,
    EnsembleConfig,
    ImageInput,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    OutboxConfig,
    PipelineConfig,
    PublishConfig,
    RuntimeConfig,
    TlsConfig,
    VectorInput,
    WindowInput,
    default_state_dir,
)
from edge_runtime.config.triggers import EveryTrigger, SourceTrigger
from edge_runtime.config.updates import UpdatesConfig
from edge_runtime.healthstate import HealthConfig  # [health] lives next to its rules

__all__ = [
    "BUNDLED_MODELS",
    "DEMO_CONFIG",
    "PACKAGE_DIR",
    "CascadeConfig",
    "Config",
    "DefaultsConfig",
    "DeviceConfig",
    "EnsembleConfig",
    "EveryTrigger",
    "HealthConfig",
    "ImageInput",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "OutboxConfig",
    "PipelineConfig",
    "PublishConfig",
    "RuntimeConfig",
    "SourceTrigger",
    "TlsConfig",
    "UpdatesConfig",
    "VectorInput",
    "WindowInput",
    "apply_override",
    "default_state_dir",
    "format_errors",
    "load_config",
    "parse_toml",
    "parse_value",
    "read_toml",
    "validate",
]
