"""Input sources: the explicit registry of source types and their config models.

``[sources.NAME]`` tables in the config are validated as :data:`SourceConfig` (the ``type`` key
picks the model) and turned into running objects by :func:`build_source`. Importing this package
needs neither OpenCV nor pyserial: each source imports its vendor library when it opens.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from edge_runtime.sources.base import BackoffConfig, Frame, Source, SourceConfigBase
from edge_runtime.sources.buffer import SensorBuffers
from edge_runtime.sources.camera import CameraConfig, CameraSource
from edge_runtime.sources.replay import ReplayConfig, ReplaySource
from edge_runtime.sources.serial import SerialConfig, SerialSource

SOURCE_TYPES: dict[str, type[Source]] = {
    "camera": CameraSource,
    "serial": SerialSource,
    "replay": ReplaySource,
}
"""Source classes by the ``type`` key of their config."""

SourceConfig = Annotated[CameraConfig | SerialConfig | ReplayConfig, Field(discriminator="type")]
"""The config of any source; pydantic picks the model from ``type``."""


def build_source(name: str, config: CameraConfig | SerialConfig | ReplayConfig) -> Source:
    """A (not yet started) source named ``name`` for ``config``."""
    try:
        cls = SOURCE_TYPES[config.type]
    except KeyError:
        raise ValueError(f"source {name}: unknown type {config.type!r}") from None
    return cls(name, config)


__all__ = [
    "SOURCE_TYPES",
    "BackoffConfig",
    "CameraConfig",
    "CameraSource",
    "Frame",
    "ReplayConfig",
    "ReplaySource",
    "SensorBuffers",
    "SerialConfig",
    "SerialSource",
    "Source",
    "SourceConfig",
    "SourceConfigBase",
    "build_source",
]
