"""Batched inference for a pipeline with several camera sources (``trigger = { sources = [...],
batch = N }``).

The worker takes up to N new frames at once (at most one per source, round-robin:
:meth:`~.fanin.RoundRobin.take`) and builds them into the rows of one staging slot; the invoke
stage sizes the model's inputs to that many rows (``Model.set_batch``: once the arena has grown,
going back to a size used before is cheap), invokes once and hands the outputs over; the result
stage splits them row by row into one result per frame, in the order the frames were taken, so
each source's results stay in capture order. A model that cannot take a batch (a fixed batch
dimension, an output without one, an engine that cannot resize) runs the rows one by one, and the
pipeline says why in its log once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.geometry import ImageTransform
from edge_runtime.pipeline.results import Triggered
from edge_runtime.pipeline.runner import ModelRunner
from edge_runtime.runtime.model import Model
from edge_runtime.sources.base import Frame

log = logging.getLogger(__name__)


@dataclass
class PreparedBatch:
    """What the worker hands to the invoke stage: ``len(trigs)`` instances in rows of ``slot``."""

    trigs: list[Triggered]
    frames: list[dict[str, Frame]]
    runner: ModelRunner
    transforms: list[ImageTransform | None]
    slot: int
    pre_ms: float
    t0: float
    sensors: list[list[tuple[str, list[str], npt.NDArray[Any]]]] | None = None
    """Per row, the sensor values kept for data capture (None: no capture)."""


@dataclass
class InvokedBatch:
    """The batch's outputs, one row per instance."""

    job: PreparedBatch
    outputs: list[npt.NDArray[Any]]
    invoke_ms: float


def usable_batch(batch: int, model: Model, where: str) -> int:
    """``batch``, or 1 when ``model`` cannot run it (logged with the reason)."""
    if batch == 1:
        return 1
    with model.lock:  # the model may be shared with pipelines already running
        reason = model.batch_error(batch)
    if reason:
        log.warning("%s: batch %d is off, frames run one at a time: %s", where, batch, reason)
        return 1
    return batch


def invoke_batch(job: PreparedBatch, release: Callable[[int], None], where: str) -> InvokedBatch:
    """Load the rows of ``job`` into its model, sized to a batch of them, and invoke once (or row by
    row where the model cannot take the batch); ``release`` gets the slot back after the last load.
    Held under the model's own lock: the model may be shared with other pipelines."""
    runner = job.runner
    model = runner.model
    rows = runner.rows(job.slot)
    runner.batch_sizes[rows] += 1
    released = False
    with model.lock:
        t1 = time.perf_counter()
        try:
            reason = model.batch_error(rows)
            if not reason:
                runner.load(job.slot)
                release(job.slot)
                released = True
                outputs = runner.invoke()
            else:
                if reason not in _told:
                    _told.add(reason)
                    log.warning("%s: frames run one by one: %s", where, reason)
                per_row: list[list[npt.NDArray[Any]]] = []
                for row in range(rows):
                    runner.load_row(job.slot, row)
                    if row == rows - 1:
                        release(job.slot)
                        released = True
                    per_row.append(runner.invoke())
                outputs = [np.concatenate([r[i] for r in per_row]) for i in range(len(per_row[0]))]
        finally:
            if not released:
                release(job.slot)
        invoke_ms = (time.perf_counter() - t1) * 1000
    return InvokedBatch(job, outputs, invoke_ms)


_told: set[str] = set()  # reasons already logged (one line per model and batch size, not per invoke)


def split(outputs: list[npt.NDArray[Any]], row: int) -> list[npt.NDArray[Any]]:
    """Row ``row`` of every output, with the batch dimension of one that post-processing expects."""
    return [o[row : row + 1] for o in outputs]
