"""The configuration schema: pydantic models of the TOML file (loading is :mod:`.load`).

Every model forbids unknown keys and describes each field. Relative paths resolve against the
config file's folder; ``bundled:NAME`` names a model shipped inside the package and ``demo:NAME``
an asset of the embedded demo. Secrets are never inline: they are read from files
(``password_file``), so the config can be world-readable and ``get_config`` never has a secret to
leak.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_runtime.config.triggers import TriggerConfig
from edge_runtime.config.updates import UpdatesConfig
from edge_runtime.healthstate import HealthConfig
from edge_runtime.http.config import HttpConfig
from edge_runtime.monitor.config import MonitorConfig
from edge_runtime.names import NAME_RE, NAME_RULE
from edge_runtime.postprocess import PostprocessConfig
from edge_runtime.runtime.delegates import CpuConfig, DelegateConfig
from edge_runtime.sources import SourceConfig
from edge_runtime.sources.base import BackoffConfig

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLED_MODELS = PACKAGE_DIR / "models"
DEMO_CONFIG = PACKAGE_DIR / "demo.toml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"name {NAME_RULE}")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` (systemd), else /var/lib/edge-runtime for root, else the user's own."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edge-runtime")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-runtime"


def _device_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "edge"
    return name[:64]


class DeviceConfig(Strict):
    id: Name = Field(
        default_factory=_device_id, description="Device name in MQTT topics (default: hostname)."
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Where the outbox, sequence numbers and model store live.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    stop_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Graceful stop bound: flush, offline, exit."
    )


class RuntimeConfig(Strict):
    backend: Literal["auto", "litert", "tflite-runtime", "onnxruntime"] = Field(
        "auto",
        description="Inference backend: auto prefers LiteRT, then tflite-runtime, for .tflite models; "
        ".onnx models always run on onnxruntime; onnxruntime runs a .tflite model's .onnx twin (same name).",
    )
    share_models: bool = Field(
        False,
        description="Pipelines that name the same model file, delegates, threads and name share one "
        "loaded model (one interpreter); inference on it is serialized.",
    )
    malloc_arenas: int = Field(
        2,
        ge=0,
        le=64,
        description="At most this many malloc arenas for all threads (glibc only; applied when the "
        "sources are built): freed camera frames are reused instead of staying resident in one arena "
        "per camera thread. 0 keeps glibc's default (eight per core).",
    )


class TlsConfig(Strict):
    required: bool = Field(False, description="Refuse to start unless TLS is configured.")
    ca: str = Field(
        "",
        validate_default=True,
        description="CA bundle that signs the broker's certificate (empty: no TLS).",
    )
    cert: str = Field("", description="Client certificate for mutual TLS.")
    key: str = Field("", description="Client private key for mutual TLS.")
    insecure: bool = Field(False, description="Skip the broker hostname check (never in production).")

    @field_validator("ca")
    @classmethod
    def _required(cls, ca: str, info: ValidationInfo) -> str:
        if info.data.get("required") and not ca:
            raise ValueError("tls.required is set but no CA is configured")
        return ca


class PublishConfig(Strict):
    qos: Literal[0, 1, 2] | None = Field(None, description="QoS of this kind (default: mqtt.qos).")
    retain: bool = Field(False, description="Publish retained.")


class MqttConfig(Strict):
    enabled: bool = Field(True, description="Publish to a broker; results also go to the outbox.")
    host: str = Field("localhost", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    prefix: Name = Field("edge", description="First level of every topic.")
    qos: Literal[0, 1, 2] = Field(1, description="Default QoS of results and events.")
    username: str = Field("", description="User name; the password comes from password_file.")
    password_file: str = Field("", description="File holding the password (first line); never logged.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    client_id: str = Field("", description="MQTT client id (default: edge-runtime-{device.id}).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="Keepalive interval in seconds.")
    session_expiry_s: int = Field(
        3600, ge=0, le=4_294_967_295, description="MQTT 5 session expiry in seconds."
    )
    reconnect: BackoffConfig = Field(
        default_factory=lambda: BackoffConfig(initial_s=1.0, max_s=60.0, factor=2.0, jitter=0.3),
        description="Jittered exponential backoff between connection attempts.",
    )
    results: PublishConfig = Field(default_factory=PublishConfig, description="QoS and retain of results.")
    events: PublishConfig = Field(default_factory=PublishConfig, description="QoS and retain of events.")
    health: PublishConfig = Field(
        default_factory=lambda: PublishConfig(qos=1, retain=True), description="QoS and retain of health."
    )
    max_inflight: int = Field(100, ge=1, le=65535, description="Unacknowledged messages in flight at most.")
    max_command_bytes: int = Field(
        65536, ge=64, le=268_435_455, description="Larger command payloads are refused."
    )


class OutboxConfig(Strict):
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, le=1 << 40, description="Outbox bound on disk (db + log); oldest go first."
    )
    reserve_bytes: int = Field(
        512 * 1024, ge=0, le=1 << 30, description="Free disk kept; below it nothing new is stored."
    )
    max_count: int = Field(
        200_000, ge=10, le=1_000_000_000, description="Outbox message bound; the oldest go first."
    )


class MetricsConfig(Strict):
    enabled: bool = Field(False, description="Serve Prometheus metrics.")
    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(9108, ge=1, le=65535, description="Port to listen on.")
    refresh_s: float = Field(
        5.0, ge=0.5, le=3600, description="Seconds between snapshots; a scrape is served the latest one."
    )
    max_connections: int = Field(
        32, ge=1, le=1024, description="Open connections at most; a new one closes the oldest."
    )
    timeout_s: float = Field(
        5.0,
        ge=0.1,
        le=120,
        description="Wall-clock seconds a connection has to send its request and read the answer.",
    )
    backlog: int = Field(128, ge=1, le=4096, description="Listen backlog (capped by net.core.somaxconn).")


def _model_entry(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


ChainEntry = Annotated[DelegateConfig, BeforeValidator(_model_entry)]


Position = Annotated[int, Field(ge=0, le=1023)]
"""A model input or output by position."""
Mean = Annotated[float, Field(ge=-1e4, le=1e4)]
"""A per-channel mean subtracted from 0-255 pixels."""
Std = Annotated[float, Field(ge=1e-6, le=1e6)]
"""A per-channel divisor of pixels: never zero, so every pixel maps to a finite value."""


class ImageInput(Strict):
    kind: Literal["image"] = Field(description="A camera frame, resized and quantized.")
    source: str = Field(description="Name of a camera source.")
    input: Position | str = Field(0, description="Model input, by position or tensor name.")
    resize: Literal["stretch", "letterbox", "crop"] = Field("stretch", description="How the frame fits.")
    pad_value: int = Field(0, ge=0, le=255, description="Pixel value of letterbox padding.")
    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="Channel order the model expects.")
    mean: Mean | Annotated[list[Mean], Field(min_length=1, max_length=3)] = Field(
        0.0, description="Subtracted from 0-255 pixels (one value, or one per channel of the colour mode)."
    )
    std: Std | Annotated[list[Std], Field(min_length=1, max_length=3)] = Field(
        1.0, description="Divides pixels after the mean (one value, or one per channel of the colour mode)."
    )

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, value: float | list[float], info: ValidationInfo) -> float | list[float]:
        color = info.data.get("color", "rgb")
        channels = 1 if color == "gray" else 3
        if isinstance(value, list) and len(value) not in (1, channels):
            raise ValueError(
                f"{info.field_name} has {len(value)} values but color = {color!r} has {channels} "
                f"channel{'s' if channels > 1 else ''}: give one value or {channels}"
            )
        return value


class VectorInput(Strict):
    kind: Literal["vector"] = Field(description="Sensor channels sampled at the trigger time.")
    source: str = Field(description="Name of a serial or replay source.")
    input: Position | str = Field(0, description="Model input, by position or tensor name.")
    channels: list[str] = Field(min_length=1, description="Channels, in the model's order.")
    sample: Literal["latest", "nearest", "linear"] = Field("linear", description="Sampling at the time.")
    max_age_s: float = Field(1.0, gt=0, le=86400, description="Older data than this is stale.")
    stale: Literal["skip", "zero", "hold"] = Field("skip", description="What stale data does.")


class WindowInput(Strict):
    kind: Literal["window"] = Field(description="The last window_s seconds of channels, resampled.")
    source: str = Field(description="Name of a serial or replay source.")
    input: Position | str = Field(0, description="Model input, by position or tensor name.")
    channels: list[str] = Field(min_length=1, description="Channels, in the model's order.")
    window_s: float = Field(gt=0, le=86400, description="Length of the window in seconds.")
    samples: int = Field(gt=1, le=100_000, description="Points the window is resampled to.")
    max_age_s: float = Field(0.5, gt=0, le=86400, description="Newest sample older than this is stale.")
    stale: Literal["skip", "zero", "hold"] = Field("skip", description="What a stale window does.")


InputBinding = Annotated[ImageInput | VectorInput | WindowInput, Field(discriminator="kind")]


def _postprocess_kind(value: Any) -> str:
    return "heads" if isinstance(value, dict) and "type" not in value else "single"


Postprocess = Annotated[
    Annotated[PostprocessConfig, Tag("single")] | Annotated[dict[str, PostprocessConfig], Tag("heads")],
    Discriminator(_postprocess_kind),
]


class ModelConfig(Strict):
    path: str = Field(description="The .tflite or .onnx file: a path, or bundled:NAME for a packaged model.")
    name: str | None = Field(None, description="Name in results (default: the file's stem).")
    version: str = Field("", description="Version reported with results.")
    delegates: list[ChainEntry] | None = Field(
        None,
        min_length=1,
        description="Delegates tried in order; the first that loads wins (default: defaults.delegates).",
    )
    threads: int | None = Field(None, ge=1, le=64, description="CPU threads (default: defaults.threads).")
    inputs: list[InputBinding] = Field(min_length=1, description="Where each model input comes from.")
    postprocess: Postprocess = Field(
        description="How outputs become a result; a table of named heads for multi-output models."
    )
    weight: float = Field(1.0, gt=0, le=1e6, description="Weight of this model in an ensemble.")


class DefaultsConfig(Strict):
    delegates: list[ChainEntry] = Field(
        default_factory=lambda: [CpuConfig()],  # type: ignore[arg-type]  # list is invariant
        min_length=1,
        description="Delegate chain of models that name none (board profiles set this).",
    )
    threads: int | None = Field(None, ge=1, le=64, description="CPU threads of models that name none.")


class EnsembleConfig(Strict):
    combine: Literal["mean", "vote"] = Field("mean", description="Weighted mean of probabilities or vote.")


class CascadeConfig(Strict):
    classifier: ModelConfig = Field(description="Classifies each box the detector finds.")
    padding: float = Field(0.1, ge=0, le=1, description="Box grown by this share before cropping.")
    max_crops: int = Field(10, ge=1, le=1000, description="At most this many boxes are classified.")


class PipelineConfig(Strict):
    name: Name = Field(description="Pipeline name, used in topics.")
    trigger: TriggerConfig = Field(
        description="A source name, a list of camera source names, {source=..}, {sources=[..]}, "
        "or {every_s=..}."
    )
    models: list[ModelConfig] = Field(min_length=1, description="One model, or an ensemble.")
    ensemble: EnsembleConfig | None = Field(None, description="Combine several models' outputs.")
    cascade: CascadeConfig | None = Field(None, description="Classify the first model's detections.")
    max_results: int | None = Field(None, ge=1, le=1 << 53, description="Stop after this many results.")

    @model_validator(mode="after")
    def _shape(self) -> PipelineConfig:
        if len(self.models) > 1 and self.ensemble is None:
            raise ValueError("several models need an [pipelines.ensemble] table")
        if self.cascade is not None and len(self.models) != 1:
            raise ValueError("a cascade has exactly one detector model")
        batch = getattr(self.trigger, "batch", 1)
        if batch > 1 and (len(self.models) > 1 or self.cascade is not None):
            raise ValueError("trigger batch runs one model: not an ensemble or a cascade")
        return self


class Config(Strict):
    device: DeviceConfig = Field(default_factory=DeviceConfig, description="This device.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Inference backend.")
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig, description="Model defaults.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Store-and-forward bounds.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health reports.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="Local HTTP API and page.")
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig, description="On-device monitoring: camera health and tamper."
    )
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig, description="Over-the-air model updates.")
    sources: dict[str, SourceConfig] = Field(default_factory=dict, description="Named inputs.")
    pipelines: list[PipelineConfig] = Field(min_length=1, description="What runs.")
    base_dir: Path = Field(
        Path("."), description="Folder relative paths resolve against (set by the loader)."
    )

    def paths(self) -> list[str]:
        """Every file path the config names: models, labels, camera files and replay files."""
        found: list[str] = []
        for pipeline in self.pipelines:
            models = list(pipeline.models) + ([pipeline.cascade.classifier] if pipeline.cascade else [])
            for model in models:
                found.append(model.path)
                heads = (
                    model.postprocess.values() if isinstance(model.postprocess, dict) else [model.postprocess]
                )
                for head in heads:
                    labels = getattr(head, "labels", None)
                    if isinstance(labels, str):
                        found.append(labels)
        for source in self.sources.values():
            value = getattr(source, "uri", None) or getattr(source, "path", None)
            if isinstance(value, str):
                found.append(value)
        return found

    def resolve(self, path: str) -> Path:
        """A config path as a file: ``bundled:``, ``demo:``, ``~``, relative to the config's folder."""
        if path.startswith("bundled:"):
            return BUNDLED_MODELS / path.removeprefix("bundled:")
        if path.startswith("demo:"):
            return self.device.state_dir / "demo" / path.removeprefix("demo:")
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p
