"""The delegate registry: where a model runs (CPU through XNNPACK, Edge TPU, GPU, NPU, ...).

A model lists a chain such as ``["edgetpu", "cpu"]``; :mod:`edge_runtime.runtime.model` tries
them in order and the first that loads wins. Each entry is a string (the key, default options)
or a table with ``type`` and options. Each delegate is a pydantic config model with
``type: Literal[KEY]`` and a :class:`Delegate` class; :data:`REGISTRY` is the explicit list.
For .onnx models the chain names ONNX Runtime execution providers (``cpu``, ``xnnpack``, ``acl``,
``provider``): the same contract, tried in order, each failure kept with its cause.
"""

from __future__ import annotations

import abc
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import DelegateError
from edge_runtime.runtime.backend import ONNXRUNTIME, Backend
from edge_runtime.runtime.modelfile import ModelInfo
from edge_runtime.runtime.onnxfile import OnnxInfo


class _DelegateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuConfig(_DelegateConfig):
    type: Literal["cpu"] = Field("cpu", description="CPU kernels, through XNNPACK where it applies.")


class EdgeTpuConfig(_DelegateConfig):
    type: Literal["edgetpu"] = Field("edgetpu", description="Coral Edge TPU (libedgetpu).")
    device: str | None = Field(
        None, description="Which Edge TPU: 'usb', 'pci', 'usb:0', 'pci:1'; empty for the first found."
    )
    library: str = Field("libedgetpu.so.1", description="Path or soname of the Edge TPU library.")


class GpuConfig(_DelegateConfig):
    type: Literal["gpu"] = Field("gpu", description="OpenCL/OpenGL GPU delegate.")
    library: str = Field(
        "libtensorflowlite_gpu_delegate.so", description="Path or soname of the GPU delegate."
    )
    options: dict[str, str] = Field(default_factory=dict, description="Options passed to it.")


class VxConfig(_DelegateConfig):
    type: Literal["vx"] = Field("vx", description="NXP i.MX NPU through the VX delegate.")
    library: str = Field("/usr/lib/libvx_delegate.so", description="Path of libvx_delegate.so.")
    options: dict[str, str] = Field(default_factory=dict, description="Options passed to it.")


class ArmnnConfig(_DelegateConfig):
    type: Literal["armnn"] = Field("armnn", description="Arm NN delegate (Mali GPU, Neon CPU).")
    library: str = Field("libarmnnDelegate.so", description="Path or soname of the Arm NN delegate.")
    backends: str = Field("GpuAcc,CpuAcc", description="Arm NN backends in order of preference.")
    options: dict[str, str] = Field(default_factory=dict, description="Further options.")


class ExternalConfig(_DelegateConfig):
    type: Literal["external"] = Field("external", description="Any delegate shared library.")
    library: str = Field(description="Path of the delegate .so.")
    options: dict[str, str] = Field(default_factory=dict, description="Options passed to it.")


# ONNX Runtime execution providers share the chain (an .onnx model's "delegates").
class XnnpackConfig(_DelegateConfig):
    type: Literal["xnnpack"] = Field("xnnpack", description="ONNX Runtime's XNNPACK execution provider.")
    options: dict[str, str] = Field(
        default_factory=dict, description="Provider options, such as intra_op_num_threads."
    )


class AclConfig(_DelegateConfig):
    type: Literal["acl"] = Field("acl", description="ONNX Runtime's Arm Compute Library provider.")
    options: dict[str, str] = Field(default_factory=dict, description="Provider options.")


class ProviderConfig(_DelegateConfig):
    type: Literal["provider"] = Field("provider", description="Any ONNX Runtime execution provider.")
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9]+ExecutionProvider$",
        description="Provider name as onnxruntime spells it, e.g. OpenVINOExecutionProvider.",
    )
    options: dict[str, str] = Field(default_factory=dict, description="Provider options.")


DelegateConfig = Annotated[
    CpuConfig
    | EdgeTpuConfig
    | GpuConfig
    | VxConfig
    | ArmnnConfig
    | ExternalConfig
    | XnnpackConfig
    | AclConfig
    | ProviderConfig,
    Field(discriminator="type"),
]


@dataclass(frozen=True)
class DelegateFailure:
    """Why one delegate of a chain was not used."""

    delegate: str
    cause: str

    def __str__(self) -> str:
        return f"{self.delegate} failed: {self.cause}"


class Delegate(abc.ABC):
    """Base: turns a config into the object ``Interpreter(experimental_delegates=...)`` takes."""

    key: ClassVar[str]
    config_class: ClassVar[type[_DelegateConfig]]

    def __init__(self, config: _DelegateConfig) -> None:
        self.config = config

    def check_model(self, info: ModelInfo | OnnxInfo) -> None:
        """Raise :class:`DelegateError` when this delegate cannot run the model at all."""
        if info.needs_edgetpu:
            raise DelegateError(
                "model is compiled for the Edge TPU (edgetpu-custom-op) and only runs on an edgetpu delegate"
            )

    @abc.abstractmethod
    def create(self, backend: Backend) -> Any | None:
        """The delegate object, or None to run on the interpreter's own CPU kernels."""

    @property
    def label(self) -> str:
        return self.key


class _LibraryDelegate(Delegate):
    def library(self) -> str:
        return str(getattr(self.config, "library"))  # noqa: B009

    def options(self) -> dict[str, str]:
        return dict(getattr(self.config, "options", {}))

    def create(self, backend: Backend) -> Any | None:
        return load_library_delegate(backend, self.library(), self.options())


class CpuDelegate(Delegate):
    key = "cpu"
    config_class = CpuConfig

    def create(self, backend: Backend) -> Any | None:
        return None


class EdgeTpuDelegate(_LibraryDelegate):
    key = "edgetpu"
    config_class = EdgeTpuConfig

    def check_model(self, info: ModelInfo | OnnxInfo) -> None:
        return None

    def options(self) -> dict[str, str]:
        assert isinstance(self.config, EdgeTpuConfig)
        return {"device": self.config.device} if self.config.device else {}


class GpuDelegate(_LibraryDelegate):
    key = "gpu"
    config_class = GpuConfig


class VxDelegate(_LibraryDelegate):
    key = "vx"
    config_class = VxConfig


class ArmnnDelegate(_LibraryDelegate):
    key = "armnn"
    config_class = ArmnnConfig

    def options(self) -> dict[str, str]:
        assert isinstance(self.config, ArmnnConfig)
        return {"backends": self.config.backends, **self.config.options}


class ExternalDelegate(_LibraryDelegate):
    key = "external"
    config_class = ExternalConfig

    @property
    def label(self) -> str:
        return f"external:{self.library()}"


@dataclass(frozen=True)
class ProviderRequest:
    """What the onnxruntime backend is asked to use: a provider name and its options."""

    name: str
    options: dict[str, str] = field(default_factory=dict)


class _ProviderDelegate(Delegate):
    provider: ClassVar[str]

    def provider_name(self) -> str:
        return self.provider

    def create(self, backend: Backend) -> Any | None:
        if backend.name != ONNXRUNTIME:
            raise DelegateError(
                f"{self.provider_name()} is an onnxruntime execution provider; "
                f"{backend.name} runs .tflite models with TFLite delegates"
            )
        return ProviderRequest(self.provider_name(), dict(getattr(self.config, "options", {})))


class XnnpackProvider(_ProviderDelegate):
    key = "xnnpack"
    config_class = XnnpackConfig
    provider = "XnnpackExecutionProvider"


class AclProvider(_ProviderDelegate):
    key = "acl"
    config_class = AclConfig
    provider = "ACLExecutionProvider"


class NamedProvider(_ProviderDelegate):
    key = "provider"
    config_class = ProviderConfig
    provider = ""

    def provider_name(self) -> str:
        assert isinstance(self.config, ProviderConfig)
        return self.config.name

    @property
    def label(self) -> str:
        return f"provider:{self.provider_name()}"


REGISTRY: dict[str, type[Delegate]] = {
    cls.key: cls
    for cls in (
        CpuDelegate,
        EdgeTpuDelegate,
        GpuDelegate,
        VxDelegate,
        ArmnnDelegate,
        ExternalDelegate,
        XnnpackProvider,
        AclProvider,
        NamedProvider,
    )
}


def parse_delegate(entry: str | dict[str, Any] | _DelegateConfig) -> Delegate:
    """A chain entry (a key, a table with ``type``, or a config model) as a :class:`Delegate`."""
    if isinstance(entry, _DelegateConfig):
        config = entry
    else:
        raw = {"type": entry} if isinstance(entry, str) else dict(entry)
        key = raw.get("type")
        if key not in REGISTRY:
            raise DelegateError(f"unknown delegate {key!r}; known: {', '.join(REGISTRY)}")
        config = REGISTRY[str(key)].config_class.model_validate(raw)
    return REGISTRY[getattr(config, "type")](config)  # noqa: B009 (every config subclass has it)


def parse_chain(entries: list[str | dict[str, Any] | _DelegateConfig] | None) -> list[Delegate]:
    return [parse_delegate(e) for e in (entries or ["cpu"])]


@contextlib.contextmanager
def _quiet_failed_delegate() -> Iterator[None]:
    """Hide the "Exception ignored ... 'Delegate' object has no attribute '_library'" that the
    runtimes print when a half-built Delegate whose library failed to load is collected."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, AttributeError) and "_library" in str(exc):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def load_library_delegate(backend: Backend, library: str, options: dict[str, str]) -> Any:
    """``load_delegate(library, options)`` with a one-line :class:`DelegateError` on failure."""
    cause = ""
    with _quiet_failed_delegate():
        try:
            return backend.load_delegate(library, options or None)
        except (OSError, ValueError, RuntimeError) as exc:
            cause = " ".join(str(exc).split())
        cause = _shorten(cause, library)
    raise DelegateError(cause)


def _shorten(message: str, library: str) -> str:
    """Keep the useful part: "libedgetpu.so.1: cannot open shared object file"."""
    marker = f"{library}: "
    if marker in message:
        message = message[message.index(marker) :]
    if ": No such file or directory" in message:
        message = message.replace(": No such file or directory", "")
    return message or f"{library}: failed to load"
