"""Every check ``run`` makes at start, made without starting anything: the preflight.

``validate-config``, ``run`` (before it builds anything), a SIGHUP reload and ``config.update``
call :func:`preflight` on a loaded config, so what one accepts the others accept. It checks:

- the state directory: a directory that is (or can be made) writable by this user;
- the HTTP API's token file (readable, a token of 16 characters at least) and TLS files;
- every file the config names (models, labels, replay files, camera files, the MQTT password
  file, the TLS CA, certificate and key): a readable regular file (symlinks followed), and its
  content: the CA and the client certificate and key are loaded into a TLS context, the password
  file has a first line, a model file parses as a TFLite flatbuffer or an ONNX model;
- each pipeline is built exactly as ``run`` builds it (:class:`edge_runtime.pipeline.Pipeline`
  with its sources, input builders and post-processors), on a :class:`StaticModel` whose inputs and
  outputs (shapes, dtypes, quantization) are read from the model file by the flatbuffer (or ONNX) reader, so
  the input binding, mean/std against the colour mode and the input's quantization, labels against
  outputs and the heads are checked without an inference runtime or a device.

Each problem is one line ``path: value: message``; they are raised together as a
:class:`ConfigError`. Nothing here writes, connects or opens a device.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edge_runtime.config import Config, ModelConfig
from edge_runtime.config.fields import config_leaves
from edge_runtime.config.guard import Rule, decision
from edge_runtime.errors import ConfigError, EdgeRuntimeError
from edge_runtime.http.auth import http_problems
from edge_runtime.runtime.modelfile import ModelInfo, TensorInfo, read_model_file
from edge_runtime.runtime.onnxfile import OnnxInfo, is_onnx_file, onnx_twin, read_onnx_file
from edge_runtime.runtime.onnxproto import ValueInfo
from edge_runtime.runtime.quant import QuantParams
from edge_runtime.sources import SourceConfig
from edge_runtime.sources.camera import CameraConfig, uri_kind
from edge_runtime.sources.replay import ReplayConfig

if TYPE_CHECKING:
    from edge_runtime.runtime.model import Model, TensorSpec

MAX_SECRET_BYTES = 64 * 1024  # a password file larger than this is not a password file
MAX_LABELS_BYTES = 16 * 1024 * 1024
QUANTIZED = ("int8", "uint8", "int16", "int32")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def open_regular(path: Path, max_bytes: int | None = None) -> bytes | None:
    """Open ``path`` (symlinks followed), check it is a regular file of at most ``max_bytes``
    and return its content (None when ``max_bytes`` is None: only opened and checked). Raises
    OSError or ValueError with a message for the user."""
    before = os.stat(path)  # never open a device node: opening some has effects (a watchdog)
    if stat.S_ISDIR(before.st_mode):
        raise ValueError("is a directory, not a file")
    if not stat.S_ISREG(before.st_mode):
        raise ValueError("is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise ValueError("changed while it was checked")
        if max_bytes is None:
            return None
        if st.st_size > max_bytes:
            raise ValueError(f"is {st.st_size} bytes, more than the {max_bytes} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(max_bytes + 1)
    finally:
        os.close(fd)


def _file_problem(
    where: str, value: str, path: Path, max_bytes: int | None = None
) -> tuple[str, bytes | None]:
    """('' or a problem line, the content when read)."""
    try:
        return "", open_regular(path, max_bytes)
    except FileNotFoundError:
        return f"{where}: {_short(value)}: no such file ({path})", None
    except PermissionError:
        return f"{where}: {_short(value)}: cannot read ({path}): permission denied", None
    except OSError as exc:
        return f"{where}: {_short(value)}: cannot open ({path}): {exc.strerror or exc}", None
    except ValueError as exc:
        return f"{where}: {_short(value)}: {path} {exc}", None


# -- the state directory --------------------------------------------------------------------------


def state_dir_problems(config: Config) -> list[str]:
    state = config.device.state_dir
    where = f"device.state_dir: {_short(str(state))}"
    if state.exists():
        if not state.is_dir():
            return [f"{where}: exists and is not a directory"]
        if not os.access(state, os.W_OK | os.X_OK):
            return [f"{where}: is not writable by this user (uid {os.getuid()})"]
        return []
    parent = state.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [f"{where}: cannot be created: {parent} is not a directory"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{where}: cannot be created: {parent} is not writable by this user (uid {os.getuid()})"]
    return []


# -- MQTT secrets and TLS -------------------------------------------------------------------------


def mqtt_problems(config: Config) -> list[str]:
    """The password file and the TLS files of an enabled MQTT link."""
    if not config.mqtt.enabled:
        return []
    return password_problems(config) + tls_problems(config)


def password_problems(config: Config) -> list[str]:
    mqtt = config.mqtt
    if not mqtt.password_file:
        return []
    where = f"mqtt.password_file: {_short(mqtt.password_file)}"
    problems = [f"{where}: needs mqtt.username (it would be ignored)"] if not mqtt.username else []
    path = config.resolve(mqtt.password_file)
    problem, data = _file_problem("mqtt.password_file", mqtt.password_file, path, MAX_SECRET_BYTES)
    if problem or data is None:
        return [*problems, problem] if problem else problems
    try:
        first = data.decode("utf-8").splitlines()[:1]
    except UnicodeDecodeError:
        return [*problems, f"{where}: is not UTF-8 text"]
    if not first or not first[0]:
        problems.append(f"{where}: the first line is empty")
    return problems


def tls_problems(config: Config) -> list[str]:
    """The CA, client certificate and key: files that open, then loaded into a TLS context."""
    tls = config.mqtt.tls
    problems: list[str] = []
    if (tls.cert or tls.key) and not tls.ca:
        problems.append("mqtt.tls.ca: '': a client certificate or key needs the CA of the broker (tls.ca)")
    if tls.key and not tls.cert:
        problems.append(f"mqtt.tls.key: {_short(tls.key)}: a key needs its certificate (tls.cert)")
    if not tls.ca:
        return problems
    files = {"ca": tls.ca, "cert": tls.cert, "key": tls.key}
    for name, value in files.items():
        problem = _file_problem(f"mqtt.tls.{name}", value, config.resolve(value))[0] if value else ""
        problems += [problem] if problem else []
    if problems:
        return problems
    ca = config.resolve(tls.ca)
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, ValueError, OSError) as exc:
        return [f"mqtt.tls.ca: {_short(tls.ca)}: not a PEM CA certificate bundle ({ca}): {exc}"]
    if tls.cert:
        key = config.resolve(tls.key) if tls.key else None
        try:
            context.load_cert_chain(str(config.resolve(tls.cert)), str(key) if key else None)
        except (ssl.SSLError, ValueError, OSError) as exc:
            problems.append(
                f"mqtt.tls.cert: {_short(tls.cert)}: the certificate and key do not load "
                f"(a PEM certificate and its unencrypted private key): {exc}"
            )
    return problems


# -- files named by sources and models ------------------------------------------------------------


def named_file_problems(config: Config) -> list[str]:
    """Models, labels and replay files: readable regular files (``demo:`` files are made at start;
    a camera file may appear later, its source retries)."""
    problems: list[str] = []
    for pattern, where, value in config_leaves(config):
        d = decision(pattern)
        if d is None or not isinstance(value, str) or not value or value.startswith("demo:"):
            continue
        if d.rule is not Rule.FILE:  # camera files may appear later: the source retries
            continue
        limit = MAX_LABELS_BYTES if pattern.endswith(".labels") else None
        problem, _ = _file_problem(where, value, config.resolve(value), limit)
        if problem:
            problems.append(problem)
    return problems


# -- pipelines, built on the models' static descriptions --------------------------------------------


def _quant(tensor: TensorInfo) -> QuantParams | None:
    q = tensor.quantization
    if q is None or tensor.dtype not in QUANTIZED or not all(s > 0 for s in q.scale):
        return None
    zeros = list(q.zero_point) + [0] * (len(q.scale) - len(q.zero_point))
    return QuantParams(tuple(q.scale), tuple(zeros[: len(q.scale)]), tensor.dtype, q.axis)


def _specs(tensors: tuple[TensorInfo, ...]) -> tuple[TensorSpec, ...]:
    from edge_runtime.runtime.model import TensorSpec

    return tuple(
        TensorSpec(position=i, name=t.name, index=t.index, shape=t.shape, dtype=t.dtype, quant=_quant(t))
        for i, t in enumerate(tensors)
    )


@dataclass(frozen=True)
class StaticModel:
    """What a pipeline reads of a model while it is built: its path, name, inputs and outputs,
    here from the file itself (:func:`read_model_file`) instead of a loaded interpreter."""

    path: Path
    name: str
    info: ModelInfo | OnnxInfo
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def sha256(self) -> str:
        return self.info.sha256

    @property
    def lock(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def batch_error(self, n: int) -> str:
        """Whether a batch works is known once the model is loaded (``run`` then runs the frames
        one by one if it does not, and logs why)."""
        return ""


def _onnx_specs(values: tuple[ValueInfo, ...], base: int) -> tuple[TensorSpec, ...]:
    """Specs as the onnxruntime backend shows them: batch fixed to 1, QDQ float edges as int8."""
    from edge_runtime.runtime.model import TensorSpec

    return tuple(
        TensorSpec(
            position=i,
            name=v.name,
            index=base + i,
            shape=tuple(
                1 if j == 0 and isinstance(d, str) else d if isinstance(d, int) else -1
                for j, d in enumerate(v.dims)
            ),
            dtype=v.quant.dtype if v.quant is not None and v.float_edge else v.dtype,
            quant=v.quant,
        )
        for i, v in enumerate(values)
    )


def load_static(mc: ModelConfig, config: Config) -> Model:
    """A :class:`StaticModel` in the place of a :class:`Model` (the pipeline's model loader)."""
    path = config.resolve(mc.path)
    if is_onnx_file(path) or config.runtime.backend == "onnxruntime":
        onnx_path = path if is_onnx_file(path) else onnx_twin(path)
        onnx, _ = read_onnx_file(onnx_path)
        inputs = _onnx_specs(onnx.inputs, 0)
        static_onnx = StaticModel(
            onnx_path, mc.name or path.stem, onnx, inputs, _onnx_specs(onnx.outputs, len(inputs))
        )
        return cast("Model", static_onnx)
    info, _ = read_model_file(path)
    static = StaticModel(
        path, mc.name or path.stem, info, _specs(info.input_tensors), _specs(info.output_tensors)
    )
    return cast("Model", static)  # the pipeline reads only path, name, inputs and outputs while it builds


def resolve_source_paths(config: Config, sc: SourceConfig) -> SourceConfig:
    """A camera file or replay file path resolved against the config's folder (and demo:)."""
    if isinstance(sc, CameraConfig) and isinstance(sc.uri, str) and uri_kind(sc.uri) == "file":
        return sc.model_copy(update={"uri": str(config.resolve(sc.uri))})
    if isinstance(sc, ReplayConfig):
        return sc.model_copy(update={"path": str(config.resolve(sc.path))})
    return sc


def pipeline_problems(config: Config) -> list[str]:
    from edge_runtime.pipeline import Pipeline
    from edge_runtime.sources import build_source

    try:
        sources = {
            name: build_source(name, resolve_source_paths(config, sc)) for name, sc in config.sources.items()
        }
    except (EdgeRuntimeError, ValueError, OSError) as exc:
        return [f"sources: {exc}"]
    problems: list[str] = []
    for i, pc in enumerate(config.pipelines):
        paths = [m.path for m in pc.models] + ([pc.cascade.classifier.path] if pc.cascade else [])
        if any(p.startswith("demo:") and not config.resolve(p).is_file() for p in paths):
            continue  # made at start
        try:
            Pipeline(pc, config, sources, lambda result: None, device=config.device.id, load=load_static)
        except (EdgeRuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            problems.append(f"pipelines[{i}]: {pc.name!r}: {message}")
    return problems


def preflight(config: Config, source: str = "config") -> None:
    """Raise :class:`ConfigError` listing everything ``run`` would refuse at start."""
    files = named_file_problems(config)
    problems = state_dir_problems(config) + mqtt_problems(config) + files
    problems += http_problems(config.http, config.resolve)
    if not files:  # pipelines read these files while they are built
        problems += pipeline_problems(config)
    if problems:
        raise ConfigError(problems, source)
