"""Pipelines: :mod:`.runner` (a model bound to its inputs and post-processing), :mod:`.stages` (the
thread engine, no model logic), :mod:`.results` (the result document, ensembles, cascades) and
:mod:`.pipeline` (the pipeline, with its hooks for updates)."""

from edge_runtime.pipeline.pipeline import Budget, Emit, Pipeline
from edge_runtime.pipeline.runner import CROP_SOURCE, ModelRunner, load_model

__all__ = ["CROP_SOURCE", "Budget", "Emit", "ModelRunner", "Pipeline", "load_model"]
