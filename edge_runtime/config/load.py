"""Loading the configuration: TOML files, ``include``, board profiles, ``--set`` overrides, the
cross-references the schema cannot see, and error rendering.

Every problem is reported at once, as ``path: value: message`` (for example
``pipelines[0].models[0].threads: 0: Input should be greater than 0``). Loading touches no network
or device.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.config.schema import DEMO_CONFIG, PACKAGE_DIR, Config, ModelConfig
from edge_runtime.config.triggers import SourceTrigger
from edge_runtime.errors import ConfigError
from edge_runtime.names import NAME_RE, NAME_RULE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# -- cross-references, checked after the schema ------------------------------------------------

CAMERA_KINDS = {"image"}
SENSOR_KINDS = {"vector", "window"}


def _references(config: Config) -> list[str]:
    problems: list[str] = []
    for name in config.sources:
        if not NAME_RE.match(name):
            problems.append(f"sources.{name}: {name!r}: source name {NAME_RULE}")
    for name in config.monitor.tamper.sources:
        where = f"monitor.tamper.sources.{name}"
        if name not in config.sources:
            problems.append(f"{where}: {name!r}: no source of that name")
        elif config.sources[name].type != "camera":
            problems.append(f"{where}: {name!r}: tamper options apply to camera sources only")
    seen: set[str] = set()
    for i, p in enumerate(config.pipelines):
        where = f"pipelines[{i}]"
        if p.name in seen:
            problems.append(f"{where}.name: {p.name!r}: duplicate pipeline name")
        seen.add(p.name)
        if isinstance(p.trigger, SourceTrigger):
            for name in p.trigger.names:
                if name not in config.sources:
                    problems.append(f"{where}.trigger: {name!r}: no source of that name")
                elif len(p.trigger.names) > 1 and config.sources[name].type != "camera":
                    problems.append(f"{where}.trigger: {name!r}: several trigger sources must be cameras")
        models = [(f"{where}.models[{j}]", m) for j, m in enumerate(p.models)]
        if p.cascade is not None:
            models.append((f"{where}.cascade.classifier", p.cascade.classifier))
        for mwhere, model in models:
            problems += _model_references(config, mwhere, model, cascade_child=mwhere.endswith("classifier"))
    for name in config.monitor.capture:
        if name not in seen:
            problems.append(f"monitor.capture.{name}: {name!r}: no pipeline of that name")
    return problems


def _model_references(config: Config, where: str, model: ModelConfig, cascade_child: bool) -> list[str]:
    problems: list[str] = []
    path = config.resolve(model.path)
    if not model.path.startswith("demo:") and not path.is_file():
        problems.append(f"{where}.path: {model.path!r}: no such file ({path})")
    for k, binding in enumerate(model.inputs):
        bwhere = f"{where}.inputs[{k}]"
        source = config.sources.get(binding.source)
        if source is None:
            if not (cascade_child and binding.source == "crop"):
                problems.append(f"{bwhere}.source: {binding.source!r}: no source of that name")
            continue
        camera = source.type == "camera"
        if binding.kind in CAMERA_KINDS and not camera:
            problems.append(f"{bwhere}.source: {binding.source!r}: an image input needs a camera source")
        if binding.kind in SENSOR_KINDS and camera:
            problems.append(
                f"{bwhere}.source: {binding.source!r}: a {binding.kind} input needs a sensor source"
            )
    return problems


# -- loading --------------------------------------------------------------------------------------


def _type_tag(part: str) -> bool:
    """A union member's name in an error location (``str``, ``constrained-float``, ``list[int]``)."""
    return part in ("str", "int", "float", "bool", "none") or any(c in part for c in "-[]")


def _walk(data: Any, loc: Sequence[int | str]) -> tuple[str, Any]:
    """Render a pydantic error location against the raw data.

    Components found in the data are followed; an absent last component is a missing key and
    is named, unless it is a type tag (``constrained-float``, ``list[...]``); other absent
    components are union tags (``camera``, ``function-after``) and skipped.
    """
    path = ""
    node: Any = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path += f".{part}" if path else str(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path += f"[{part}]"
        elif i == len(loc) - 1 and isinstance(part, str) and not _type_tag(part):
            path += f".{part}" if path else part
            node = None
    return path or "(top)", node


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict) else "{...}"
    return text if len(text) <= 60 else text[:57] + "..."


def format_errors(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    best: dict[str, Any] = {}  # per path: of the members of a union (a number or a list), the
    for err in exc.errors():  # error that is not a plain type mismatch when there is one
        path, node = _walk(data, err["loc"])
        mismatch = err["type"].endswith(("_type", "_parsing"))
        if path not in best or (best[path][2] and not mismatch):
            best[path] = (node, err, mismatch)
    for path, (node, err, _) in best.items():
        value = (
            _short(node)
            if node is not None
            else "(missing)"
            if err["type"] == "missing"
            else _short(err.get("input"))
        )
        message = err["msg"].removeprefix("Value error, ")
        line = f"{path}: {value}: {message}"
        if line not in problems:
            problems.append(line)
    return problems


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (numbers, booleans, arrays, inline tables),
    else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``KEY=VALUE`` (dotted path; list items by index, as in ``pipelines.0.models.0.threads``)."""
    if "=" not in assignment:
        raise ConfigError([f"--set {assignment}: expected KEY=VALUE"], "--set")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError([f"--set {assignment}: empty key"], "--set")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError([f"--set {key}: {here}: no list item {part}"], "--set")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError([f"--set {key}: {here}: is not a table"], "--set")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError([f"--set {key}: no list item {last}"], "--set")
        node[int(last)] = parse_value(raw)
    elif isinstance(node, dict):
        node[last] = parse_value(raw)
    else:
        raise ConfigError([f"--set {key}: {'.'.join(parts[:-1])}: is not a table"], "--set")


ENV_PREFIX = "EDGE_RUNTIME__"


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``EDGE_RUNTIME__SECTION__KEY=value`` variables as ``(variable, "section.key=value")`` pairs.

    ``__`` separates the path's parts, which are lower-cased (``EDGE_RUNTIME__MQTT__HOST`` is
    ``mqtt.host``, ``EDGE_RUNTIME__PIPELINES__0__MODELS__0__THREADS`` is
    ``pipelines.0.models.0.threads``); the value is read like a ``--set`` value. Sorted by name,
    so the order does not depend on the environment's.
    """
    pairs: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        if not all(parts):
            raise ConfigError([f"{name}: expected {ENV_PREFIX}SECTION__KEY (parts joined by __)"], name)
        pairs.append((name, ".".join(p.lower() for p in parts) + "=" + environ[name]))
    return pairs


def validate(data: dict[str, Any], base_dir: Path, source: str = "config") -> Config:
    """Validate raw TOML data; raise :class:`ConfigError` listing every problem."""
    data = dict(data)
    data["base_dir"] = str(base_dir)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, data), source) from None
    problems = _references(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"], str(path)) from None
    return parse_toml(text, str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """TOML text as data; any failure of the parser (syntax, nesting too deep for the parser's
    recursion, values it cannot represent) is one :class:`ConfigError` line."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"], source) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid TOML: nested too deeply"], source) from None
    except (ValueError, OverflowError, MemoryError) as exc:
        raise ConfigError([f"{source}: invalid TOML: {type(exc).__name__}: {exc}"], source) from None
    return data


def profile_dirs() -> list[Path]:
    """Where board profiles are looked up: ``$EDGE_RUNTIME_PROFILES`` (colon-separated), then
    ``$CONFIGURATION_DIRECTORY/profiles`` (systemd), /etc/edge-runtime/profiles, and the source
    tree's devices/."""
    dirs = [Path(p) for p in os.environ.get("EDGE_RUNTIME_PROFILES", "").split(":") if p]
    dirs += [Path(p) / "profiles" for p in os.environ.get("CONFIGURATION_DIRECTORY", "").split(":") if p]
    return [*dirs, Path("/etc/edge-runtime/profiles"), PACKAGE_DIR.parent / "devices"]


def find_profile(name: str) -> Path:
    """A board profile by name (``rpi5``) or path: /etc/edge-runtime/profiles, then devices/."""
    candidate = Path(name).expanduser()
    if candidate.suffix == ".toml" or "/" in name:
        if candidate.is_file():
            return candidate
        raise ConfigError([f"profile: {name!r}: no such file"], "--profile")
    for folder in profile_dirs():
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in profile_dirs() if folder.is_dir() for p in folder.glob("*.toml")})
    raise ConfigError(
        [f"profile: {name!r}: unknown profile; known: {', '.join(known) or 'none'}"], "--profile"
    )


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: tables merge key by key, everything else (lists too) is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_includes(
    file: Path, seen: tuple[Path, ...] = (), data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The file's data (``data`` when given: the file's text not yet written) over its
    ``include`` files (paths relative to it, or profile names)."""
    if file.resolve() in seen:
        raise ConfigError([f"include: {str(file)!r}: includes itself"], str(seen[0]))
    data = dict(data) if data is not None else read_toml(file)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError([f"include: {includes!r}: must be a file name or a list of them"], str(file))
    base: dict[str, Any] = {}
    for name in includes:
        path = file.parent / name if (file.parent / name).is_file() else find_profile(name)
        base = merge(base, _with_includes(path, (*seen, file.resolve())))
    return merge(base, data)


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    profile: str | None = None,
    *,
    text: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load the TOML file at ``path`` (the embedded demo when None) over an optional board
    ``profile`` and the files it includes, then apply the ``EDGE_RUNTIME__*`` variables of
    ``environ`` (default: the process environment) and the ``--set`` overrides, which win. With
    ``text``, that is the file's content (a config not written yet: ``config.update`` validates
    before it writes)."""
    file = Path(path) if path is not None else DEMO_CONFIG
    data = _with_includes(file, data=parse_toml(text, str(file)) if text is not None else None)
    if profile:
        data = merge(_with_includes(find_profile(profile)), data)
    for variable, assignment in env_overrides(os.environ if environ is None else environ):
        try:
            apply_override(data, assignment)
        except ConfigError as exc:
            raise ConfigError([p.replace("--set", variable, 1) for p in exc.problems], variable) from None
    for assignment in overrides:
        apply_override(data, assignment)
    return validate(data, file.resolve().parent, str(file))
