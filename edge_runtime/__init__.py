"""edge-runtime: an inference daemon for ARM edge boards.

Loads pruned, int8-quantized TFLite models, runs them on the board's accelerator delegate with the
CPU as the fallback, fuses camera frames and serial-sensor readings into their inputs, and reports
results and health over MQTT.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from edge_runtime.errors import EdgeRuntimeError

try:
    __version__ = version("edge-runtime")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["EdgeRuntimeError", "__version__"]
