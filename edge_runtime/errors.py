"""The one exception tree of edge-runtime.

Every error the package raises on purpose derives from :class:`EdgeRuntimeError`; each leaf also
subclasses the builtin a caller would naturally catch (``ValueError``, ``OSError``, ...), so code
that knows nothing about edge-runtime still handles them sensibly. Messages carry the context a
user needs: a model path, an input name, a device path, a config path.
"""

from __future__ import annotations


class EdgeRuntimeError(Exception):
    """Base of every error raised by edge-runtime."""


class ConfigError(EdgeRuntimeError, ValueError):
    """The configuration is invalid; ``problems`` lists every ``path: value: message``."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        head = f"{source}: {count} error{'s' if count != 1 else ''}"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))


class BackendUnavailableError(EdgeRuntimeError, ImportError):
    """No inference backend (LiteRT or tflite-runtime) can be imported."""


class ModelFileError(EdgeRuntimeError, OSError):
    """A model file is missing or cannot be read."""


class ModelFormatError(EdgeRuntimeError, ValueError):
    """A file is not a readable TFLite flatbuffer (empty, text, random, truncated)."""


class ModelLoadError(EdgeRuntimeError, RuntimeError):
    """A valid model file could not be loaded by any delegate in its chain."""


class DelegateError(EdgeRuntimeError, OSError):
    """One delegate could not be loaded (library missing, device absent, bad options)."""


class InputError(EdgeRuntimeError, ValueError):
    """An array given to a model does not match the input it is bound to."""


class InvokeError(EdgeRuntimeError, RuntimeError):
    """The interpreter failed while running a model."""


class SourceError(EdgeRuntimeError, OSError):
    """A camera, serial or replay source failed to open or read."""


class ParseError(EdgeRuntimeError, ValueError):
    """A serial or replay line could not be parsed."""


class PipelineError(EdgeRuntimeError, RuntimeError):
    """A pipeline cannot be built from its configuration or cannot run."""
