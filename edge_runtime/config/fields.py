"""The config schema as a list of leaf fields, and a config as a list of leaf values.

A leaf is named by a *pattern*: dotted field names, ``[]`` for an item of a list of tables and
``*`` for a key of a table of tables (``pipelines[].models[].postprocess.labels``,
``sources.*.uri``). Unions of tables (source types, post-processing kinds, delegates) contribute
the fields of every member under the same pattern. :func:`schema_leaves` walks the pydantic models;
:func:`config_leaves` walks a validated config. The security policy of ``config.update``
(:mod:`edge_runtime.config.guard`) and the tests that keep the schema bounded are built on them.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class SchemaLeaf:
    """One leaf field of the schema: its pattern, the model that declares it, its annotation."""

    pattern: str
    model: type[BaseModel]
    name: str
    info: FieldInfo


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(type without Annotated, its Annotated metadata)."""
    meta: list[Any] = []
    while get_origin(annotation) is typing.Annotated:
        args = get_args(annotation)
        annotation, meta = args[0], meta + list(args[1:])
    return annotation, meta


def _members(annotation: Any) -> list[Any]:
    annotation, _ = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def _containers(
    annotation: Any,
) -> tuple[list[type[BaseModel]], list[type[BaseModel]], list[type[BaseModel]]]:
    """(tables, items of lists of tables, values of tables of tables) in ``annotation``."""
    direct, listed, keyed = [], [], []
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            direct.append(member)
        elif get_origin(member) is list:
            listed += _models(get_args(member)[0])
        elif get_origin(member) is dict:
            keyed += _models(get_args(member)[1])
    return direct, listed, keyed


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def schema_leaves(model: type[BaseModel], prefix: str = "") -> Iterator[SchemaLeaf]:
    """Every leaf field of ``model`` and the tables under it, by pattern (a pattern may repeat
    when several union members declare the same field)."""
    for name, info in model.model_fields.items():
        path = _join(prefix, name)
        direct, listed, keyed = _containers(info.annotation)
        if not (direct or listed or keyed):
            yield SchemaLeaf(path, model, name, info)
            continue
        for sub in direct:
            yield from schema_leaves(sub, path)
        for sub in listed:
            yield from schema_leaves(sub, path + "[]")
        for sub in keyed:
            yield from schema_leaves(sub, path + ".*")


def config_leaves(value: BaseModel, prefix: str = "", concrete: str = "") -> Iterator[tuple[str, str, Any]]:
    """(pattern, concrete path, value) of every leaf of a validated config or table."""
    for name in type(value).model_fields:
        item = getattr(value, name)
        path, where = _join(prefix, name), _join(concrete, name)
        if isinstance(item, BaseModel):
            yield from config_leaves(item, path, where)
        elif isinstance(item, list) and item and all(isinstance(i, BaseModel) for i in item):
            for index, sub in enumerate(item):
                yield from config_leaves(sub, path + "[]", f"{where}[{index}]")
        elif isinstance(item, dict) and item and all(isinstance(i, BaseModel) for i in item.values()):
            for key, sub in item.items():
                yield from config_leaves(sub, path + ".*", f"{where}.{key}")
        else:
            yield path, where, item


# -- numeric bounds -----------------------------------------------------------------------------------

_LOWER = (annotated_types.Ge, annotated_types.Gt)
_UPPER = (annotated_types.Le, annotated_types.Lt)


def unbounded_numbers(leaf: SchemaLeaf) -> list[str]:
    """The numeric parts (int or float, alone, in a union or in a list) of a leaf that lack a
    lower or an upper bound; empty when every number it can hold is bounded (and so finite)."""
    return _unbounded(leaf.info.annotation, list(leaf.info.metadata), leaf.pattern)


def _unbounded(annotation: Any, inherited: list[Any], where: str) -> list[str]:
    annotation, meta = _unwrap(annotation)
    constraints = list(inherited)
    for item in meta:  # Field(...) inside Annotated carries its constraints as metadata
        constraints += item.metadata if isinstance(item, FieldInfo) else [item]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _unbounded(arg, constraints, where)]
    if origin in (list, tuple, set, frozenset):
        return [m for arg in get_args(annotation) if arg is not Ellipsis for m in _unbounded(arg, [], where)]
    if origin is dict:
        return _unbounded(get_args(annotation)[1], [], where)
    if origin is Literal or annotation is bool:
        return []
    if annotation in (int, float):
        lower = any(isinstance(c, _LOWER) for c in constraints)
        upper = any(isinstance(c, _UPPER) for c in constraints)
        if not (lower and upper):
            missing = " and ".join(n for n, ok in (("lower", lower), ("upper", upper)) if not ok)
            return [f"{where}: {annotation.__name__} without a {missing} bound"]
    return []
