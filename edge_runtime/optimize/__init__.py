"""``edge-runtime optimize``: post-training int8 quantization without TensorFlow.

Calibration data adapters (:mod:`.data`), the two quantization engines run in child processes
(:mod:`.engines`, :mod:`.child`), flatbuffer rewrites (:mod:`.rewrite`: a default signature,
magnitude pruning), side-by-side verification (:mod:`.verify`, :mod:`.coverage`), the report and
the manifest (:mod:`.report`), and the orchestration (:mod:`.run`). The engines need the
``optimize`` extra (``pip install 'edge-runtime[optimize]'``); nothing here is imported by the daemon.
"""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError


class OptimizeError(EdgeRuntimeError, ValueError):
    """A user error of ``optimize``: bad model, bad calibration data, no engine could quantize."""
