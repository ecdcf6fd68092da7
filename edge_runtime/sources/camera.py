"""Camera source: one OpenCV capture thread that keeps only the latest frame.

The capture thread reads a device, a network stream (RTSP, HTTP MJPEG), a GStreamer pipeline or
a video file, and replaces the single "latest" :class:`Frame` with each new one; a frame replaced
before any consumer took it is counted as dropped. There is never a queue, so a slow pipeline
always works on the newest frame and memory stays flat.

Files are played either in real time (``realtime = true``: frames are released at the file's fps
and stamped when released) or in lock-step (``realtime = false``: the next frame is read only
once the previous one was taken, waiting at most ``stall_timeout_s``), which lets a consumer see
every frame in order. At the end of a file the source is finished, or starts over with ``loop``.
A live source that ends, fails or stalls for ``stall_timeout_s`` is ``down`` and is reopened with
backoff; so is a file that cannot be opened (it comes back when the file does). OpenCV is imported
only when the capture opens, so configs load without it.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from edge_runtime.errors import SourceError
from edge_runtime.redaction import redact_text
from edge_runtime.sources.base import Frame, Source, SourceConfigBase
from edge_runtime.sources.jpeg import ask_raw, decode, reduction

log = logging.getLogger(__name__)

UriKind = Literal["device", "file", "stream", "pipeline"]

FPS_WINDOW_S = 5.0
"""The measured frame rate covers this many recent seconds."""

RESYNC_S = 1.0
"""A real-time file that falls this far behind its schedule restarts the schedule from now."""

FALLBACK_FILE_FPS = 25.0
"""Pace of a real-time file whose container does not say its frame rate (and no ``fps`` is set)."""

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class CameraConfig(SourceConfigBase):
    """A camera, network stream, GStreamer pipeline or video file read with OpenCV."""

    type: Literal["camera"] = Field(
        default="camera", description="Source type: a camera or video read with OpenCV."
    )
    uri: str | Annotated[int, Field(ge=0, le=1023)] = Field(
        description="Device index (0) or path (/dev/video0), video file path, rtsp:// or http(s):// "
        "URL, or a GStreamer pipeline (any string containing '!').",
    )
    api: Literal["auto", "ffmpeg", "gstreamer", "v4l2"] = Field(
        default="auto", description="OpenCV capture backend; auto picks one from the uri."
    )
    fps: float | None = Field(
        default=None,
        ge=0.01,
        le=1000,
        description="Target frame rate: a faster camera or file is thinned to it.",
    )
    width: int | None = Field(
        default=None, gt=0, le=16384, description="Requested capture width of a device, in pixels."
    )
    height: int | None = Field(
        default=None, gt=0, le=16384, description="Requested capture height of a device, in pixels."
    )
    realtime: bool = Field(
        default=True,
        description="Files only: release frames at the file's fps (true), or one frame each time "
        "the previous one was taken, so no frame is missed (false).",
    )
    loop: bool = Field(default=False, description="Files only: start over at the end instead of finishing.")
    reduced_decode: Literal["auto", "off"] = Field(
        default="auto",
        description="MJPEG only: decode at 1/2 or 1/4 size when every model input fed by this camera "
        "is that much smaller in both dimensions (auto), or at full size (off).",
    )
    stall_timeout_s: float = Field(
        default=5.0,
        ge=0.5,
        le=3600,
        description="No frame for this long: the source is down and is reopened.",
    )

    @field_validator("uri")
    @classmethod
    def _uri_not_empty(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 0:
            raise ValueError("a device index cannot be negative")
        if isinstance(value, str) and not value.strip():
            raise ValueError("uri is empty")
        return value


def uri_kind(uri: str | int) -> UriKind:
    """What ``uri`` names: a device (index or /dev/video*), a stream URL, a pipeline or a file."""
    if isinstance(uri, int) or uri.strip().isdigit() or uri.startswith("/dev/video"):
        return "device"
    if "!" in uri:
        return "pipeline"
    if uri.lower().startswith(_STREAM_SCHEMES):
        return "stream"
    return "file"


def redact(uri: str | int) -> str:
    """The uri for logs and errors, without credentials (``rtsp://user:pw@host`` -> ``rtsp://***@host``)."""
    return redact_text(str(uri))


class CameraSource(Source):
    """Latest-frame camera: :meth:`latest` and :meth:`get` return :class:`Frame` objects."""

    kind = "camera"

    def __init__(self, name: str, config: CameraConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, clock)
        self.cfg = config
        self.uri_kind: UriKind = uri_kind(config.uri)
        self.label = redact(config.uri)
        self.frames = 0
        """Frames released to consumers."""
        self.dropped = 0
        """Frames replaced before any consumer took them."""
        self.skipped = 0
        """Frames thinned out to honour ``fps``."""
        self.loops = 0
        """Times a looping file started over."""
        self.stream_fps: float | None = None
        self.frame_size: tuple[int, int] | None = None
        self._cap: Any = None
        self._latest: Frame | None = None
        self._taken = True
        self._due: float | None = None
        self._next_emit: float | None = None
        self._index = 0
        self._last_frame_at = 0.0
        self._recent: collections.deque[float] = collections.deque()
        self._fps_since = clock()
        self.largest_input: tuple[int, int] | None = None  # (w, h): every model input it feeds fits in it
        self.decode_scale = 1  # 1, 2 or 4: frames decoded from the raw JPEG bytes at 1/decode_scale
        self._raw_refused = False  # the backend gave no JPEG bytes: full decode from then on

    # -- consumers -----------------------------------------------------------------------------------

    def latest(self) -> Frame | None:
        """The newest frame (None before the first), marked as taken."""
        with self._cond:
            frame = self._latest
            if frame is not None and not self._taken:
                self._taken = True
                self._cond.notify_all()
            return frame

    def peek(self) -> Frame | None:
        """The newest frame without taking it (for snapshots: pipelines still see it as new)."""
        with self._cond:
            return self._latest

    def get(self, after_seq: int = 0, timeout: float = 1.0) -> Frame | None:
        """Wait up to ``timeout`` s for a frame with ``seq > after_seq``, take it and return it.

        Returns None on timeout, or at once when the source was stopped or the file finished."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.seq <= after_seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or self.finished:
                    return None
                self._cond.wait(remaining)
            self._taken = True
            self._cond.notify_all()
            return self._latest

    # -- Source hooks --------------------------------------------------------------------------------

    def _open(self) -> None:
        self.finished = False
        self._open_capture()
        self._due = None
        self._next_emit = None
        self._last_frame_at = self.clock()

    def _open_capture(self) -> None:
        import cv2  # OpenCV: imported here so configs load without it

        uri, kind = self.cfg.uri, self.uri_kind
        api: str = self.cfg.api
        target: str | int = uri
        if kind == "device" and (isinstance(uri, int) or uri.strip().isdigit()):
            target = int(uri)
        if kind == "file" and not Path(str(uri)).is_file():
            raise SourceError(f"video file not found: {uri}")
        backends = {
            "auto": cv2.CAP_ANY,
            "ffmpeg": cv2.CAP_FFMPEG,
            "gstreamer": cv2.CAP_GSTREAMER,
            "v4l2": cv2.CAP_V4L2,
        }
        if api == "auto":
            api = {"pipeline": "gstreamer", "device": "v4l2"}.get(kind, "auto")
        if api != "auto" and not cv2.videoio_registry.hasBackend(backends[api]):
            raise SourceError(f"camera {self.label}: this OpenCV build has no {api} backend")
        params: list[int] = []
        if kind == "stream" and api in ("auto", "ffmpeg"):
            timeout_ms = int(self.cfg.stall_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(target, backends[api], params)
        if not cap.isOpened():
            cap.release()
            from edge_runtime.recovery import why_unopenable

            raise SourceError(f"cannot open camera {self.label} (backend {api}): {why_unopenable(target)}")
        if kind == "device":
            if self.cfg.width is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            if self.cfg.height is not None:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            if self.cfg.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.stream_fps = fps if math.isfinite(fps) and fps > 0 else None
        self.decode_scale = self._raw_jpeg(cap, kind, api)
        self._cap = cap
        self._index = 0
        log.log(
            logging.DEBUG if self.loops else logging.INFO,  # a looping file reopens on every pass
            "camera %s: opened %s with %s (%s fps)",
            self.name,
            self.label,
            cap.getBackendName(),
            self.stream_fps,
        )

    def _raw_jpeg(self, cap: Any, kind: UriKind, api: str) -> int:
        """The reduction of raw JPEG frames from ``cap`` (1: OpenCV decodes them at full size)."""
        import cv2

        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        factor = reduction(size, self.largest_input) if self.cfg.reduced_decode == "auto" else 1
        return factor if factor > 1 and not self._raw_refused and ask_raw(cap, kind, api) else 1

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _peer_probe(self) -> Callable[[], bool] | None:
        from edge_runtime.recovery import path_probe

        uri = self.cfg.uri
        if self.uri_kind in ("file", "device") and isinstance(uri, str) and uri.startswith("/"):
            return path_probe(uri)
        return None

    def _close(self) -> None:
        self._release()

    def _read_once(self) -> bool:
        if self.uri_kind == "file":
            return self._read_file()
        return self._read_live()

    # -- files ------------------------------------------------------------------------------------------

    def _wait_taken(self) -> None:
        """Lock-step file mode: wait (bounded) until the previous frame was taken."""
        deadline = time.monotonic() + self.cfg.stall_timeout_s
        with self._cond:
            while not self._taken and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)

    def _read_file(self) -> bool:
        if not self.cfg.realtime:
            self._wait_taken()
        else:  # wait, then decode: a paced file camera holds no decoded frame while it waits
            now = self.clock()
            self._due = now if self._due is None or now - self._due > RESYNC_S else self._due
            self._stop.wait(max(0.0, self._due - now))
        if self._stop.is_set():
            return True
        ok, image = self._cap.read()
        if not ok or image is None:
            return self._end_of_file()
        file_fps = self.stream_fps or self.cfg.fps or FALLBACK_FILE_FPS
        t_stream = self._index / file_fps
        self._index += 1
        if self.cfg.realtime and self._due is not None:
            self._due += 1.0 / file_fps
        if self._keep(t_stream):
            self._emit(image, self.clock())
        return True

    def _end_of_file(self) -> bool:
        path = self.cfg.uri
        if self._index == 0:
            raise SourceError(f"video file {path} has no readable frames")
        if not self.cfg.loop:
            log.info("camera %s: end of %s after %d frames", self.name, path, self._index)
            with self._cond:
                self.finished = True
                self._cond.notify_all()
            return False
        self.loops += 1
        self._release()
        self._open_capture()  # SourceError when the file is gone: down, then retried with backoff
        self._next_emit = None
        return True

    # -- live sources -------------------------------------------------------------------------------------

    def _read_live(self) -> bool:
        ok, image = self._cap.read()
        now = self.clock()
        if not ok or image is None:
            if self.uri_kind in ("stream", "pipeline"):
                raise SourceError(f"camera stream {self.label} ended or stalled")
            if now - self._last_frame_at > self.cfg.stall_timeout_s:
                raise SourceError(f"no frame from camera {self.label} for {self.cfg.stall_timeout_s:g} s")
            self._stop.wait(0.05)
            return True
        self._last_frame_at = now
        if self._keep(now):
            self._emit(image, now)
        return True

    # -- frames ------------------------------------------------------------------------------------

    def _keep(self, t_stream: float) -> bool:
        """Thin to ``fps``: keep a frame when its stream time reaches the next slot."""
        if self.cfg.fps is None:
            return True
        period = 1.0 / self.cfg.fps
        if self._next_emit is not None and t_stream < self._next_emit - 0.1 * period:
            self.skipped += 1
            return False
        if self._next_emit is None or t_stream - self._next_emit >= period:
            self._next_emit = t_stream + period
        else:
            self._next_emit += period
        return True

    def _emit(self, image: npt.NDArray[np.uint8], t_mono: float) -> None:
        if self.decode_scale > 1:  # raw JPEG bytes: decoded here at 1/decode_scale size
            decoded = decode(image, self.decode_scale)
            if decoded is None:  # not JPEG after all: reopened, and OpenCV decodes from then on
                self._raw_refused = True
                raise SourceError(f"camera {self.label}: frames are not JPEG; decoding them at full size")
            image = decoded
        t_wall = time.time()
        with self._cond:
            if self._latest is not None and not self._taken:
                self.dropped += 1
            scale = self.decode_scale
            self._latest = Frame(image=image, seq=self.seq + 1, t_mono=t_mono, t_wall=t_wall, scale=scale)
            self._taken = False
            self.frames += 1
            self.frame_size = (int(image.shape[1]) * scale, int(image.shape[0]) * scale)
            self._recent.append(t_mono)
            while self._recent[0] < t_mono - FPS_WINDOW_S:
                self._recent.popleft()
            self._publish(t_mono)

    def measured_fps(self) -> float:
        """Frames released per second over the last few seconds."""
        now = self.clock()
        count = sum(1 for t in list(self._recent) if t > now - FPS_WINDOW_S)
        span = min(FPS_WINDOW_S, now - self._fps_since)  # decays to 0 within the window when frames stop
        return count / span if count and span > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        out, age = super().stats(), self.last_sample_age()
        out.update(
            uri=self.label,
            frames=self.frames,
            dropped=self.dropped,
            skipped=self.skipped,
            loops=self.loops,
            last_frame_age_s=None if age is None else round(age, 3),
            fps=round(self.measured_fps(), 2),
            stream_fps=self.stream_fps,
            width=None if self.frame_size is None else self.frame_size[0],
            height=None if self.frame_size is None else self.frame_size[1],
            decode_scale=self.decode_scale,
        )
        return out
