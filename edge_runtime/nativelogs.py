"""Native libraries' own stderr output (OpenCV, FFmpeg inside OpenCV) kept out of the log format.

OpenCV and its FFmpeg backend write straight to file descriptor 2 ("[ WARN:0@1.2] global ...",
"[tcp @ 0x...] Connection to tcp://... failed"), outside the daemon's log format and the journal's
priorities. Their levels are set from the environment before OpenCV is first imported: below
``debug`` only their errors are written, and FFmpeg is silenced (the camera source puts the cause
of a failure into its own error message instead: see :func:`edge_runtime.recovery.why_unopenable`).
A variable already set by the user is left alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

AV_LOG_QUIET = -8
AV_LOG_VERBOSE = 40


def configure_native_logging(level: int, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set ``OPENCV_LOG_LEVEL`` and ``OPENCV_FFMPEG_LOGLEVEL`` for the daemon's log ``level``;
    returns what was set."""
    env = os.environ if environ is None else environ
    debug = level <= logging.DEBUG
    wanted = {
        "OPENCV_LOG_LEVEL": "DEBUG" if debug else "ERROR",
        "OPENCV_FFMPEG_LOGLEVEL": str(AV_LOG_VERBOSE if debug else AV_LOG_QUIET),
    }
    done = {}
    for key, value in wanted.items():
        if key not in env:
            env[key] = value
            done[key] = value
    return done
