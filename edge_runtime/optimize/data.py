"""Calibration data: one adapter per kind, each yielding samples the model's float inputs take.

Kinds: a folder of images (labels from sub-folder names), a video file, an ``.npz`` of input arrays
(labels in ``labels`` or ``<output>_labels``), and daemon captures (a folder of ``NAME.json`` +
``NAME.jpg`` pairs; the JSON may hold ``label`` and non-image ``inputs``). Images go through
:class:`edge_runtime.fusion.ImageBuilder`, the pipeline's own preprocessing, with the image binding of
``--config``/``--pipeline`` when given, so calibration sees what inference sees. Every bad input is an
:class:`OptimizeError` with one line saying which file and why.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import PipelineError
from edge_runtime.optimize import OptimizeError
from edge_runtime.runtime.model import TensorSpec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpg", ".mjpeg"})
MAX_SAMPLES_LIMIT, MAX_BYTES = 100_000, 1 << 30  # at most this many samples read, bytes of arrays kept


@dataclass(frozen=True)
class ImagePrep:
    """How one image input is fed: the fields of a pipeline's ``image`` binding."""

    resize: str = "stretch"
    color: str = "rgb"
    pad_value: int = 0
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 255.0


@dataclass(frozen=True)
class Sample:
    """One sample: a float array per model input (in input order), and labels by output position."""

    inputs: tuple[npt.NDArray[np.float32], ...]
    labels: Mapping[int, int] = field(default_factory=dict)
    origin: str = ""


@dataclass(frozen=True)
class Dataset:
    """The samples read from one source, what kind it was, and what was skipped and why."""

    kind: str
    source: str
    samples: tuple[Sample, ...]
    skipped: tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        return any(s.labels for s in self.samples)


@dataclass(frozen=True)
class ModelInputs:
    """What the float model takes: its input specs, signature names, output names, image preps."""

    inputs: tuple[TensorSpec, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    preps: Mapping[int, ImagePrep]
    labels: tuple[str, ...] = ()

    def is_image(self, position: int) -> bool:
        shape = self.inputs[position].shape
        return (len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3)) or (
            len(shape) == 3 and shape[0] == 1 and position in self.preps
        )

    def prep(self, position: int) -> ImagePrep:
        if position in self.preps:
            return self.preps[position]
        shape = self.inputs[position].shape
        return ImagePrep(color="gray" if len(shape) == 3 or shape[-1] == 1 else "rgb")


class _Images:
    """Pixels -> a model input through the pipeline's ImageBuilder, one per image input."""

    def __init__(self, model: ModelInputs) -> None:
        from edge_runtime.fusion import ImageBuilder

        self.builders: dict[int, Any] = {}
        for position, spec in enumerate(model.inputs):
            if not model.is_image(position):
                continue
            p = model.prep(position)
            try:
                self.builders[position] = ImageBuilder(spec, p.resize, p.color, p.pad_value, p.mean, p.std)
            except PipelineError as exc:
                raise OptimizeError(f"input {model.input_names[position]!r}: {exc}") from exc

    def build(self, position: int, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[Any] = self.builders[position].build(pixels)
        return np.array(out, dtype=np.float32, copy=True)


def _label_index(name: str, labels: Sequence[str]) -> int | None:
    if labels and name in labels:
        return labels.index(name)
    return int(name) if name.lstrip("-").isdigit() else None


def _only_image_input(model: ModelInputs, kind: str, source: Path) -> int:
    images = [p for p in range(len(model.inputs)) if model.is_image(p)]
    if len(model.inputs) != 1 or not images:
        described = ", ".join(
            f"{n} {s.describe()}" for n, s in zip(model.input_names, model.inputs, strict=True)
        )
        raise OptimizeError(
            f"{source}: a {kind} feeds one image input, but the model takes {described}; "
            "use an .npz with one array per input"
        )
    return images[0]


def _read_image(path: Path) -> npt.NDArray[np.uint8] | None:
    import cv2

    raw = np.fromfile(path, dtype=np.uint8) if path.stat().st_size else np.zeros(0, np.uint8)
    if raw.size == 0:
        return None
    image: Any = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8:
        return None  # not an image, or 16-bit / float pixels the pipeline never sees
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.asarray(image, dtype=np.uint8)


class _Budget:
    """Bounds the memory the samples of one source take (:data:`MAX_BYTES`)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.used = 0

    def add(self, samples: list[Sample], sample: Sample) -> None:
        self.used += sum(a.nbytes for a in sample.inputs)
        if self.used > MAX_BYTES:
            raise OptimizeError(
                f"{self.source}: the samples exceed {MAX_BYTES >> 20} MB in memory; lower --max-samples"
            )
        samples.append(sample)


def image_folder(path: Path, model: ModelInputs, max_samples: int) -> Dataset:
    """Every image under ``path`` (sorted); a sub-folder's name is its images' label."""
    import cv2

    position = _only_image_input(model, "folder of images", path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OptimizeError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    images = _Images(model)
    samples: list[Sample] = []
    skipped: list[str] = []
    budget = _Budget(path)
    for file in files:
        if len(samples) >= max_samples:
            break
        try:
            pixels = _read_image(file)
        except OSError as exc:
            skipped.append(f"{file}: {exc.strerror or exc}")
            continue
        if pixels is None:
            skipped.append(f"{file}: not a readable image")
            continue
        labels: dict[int, int] = {}
        if file.parent != path and len(model.output_names) == 1:
            index = _label_index(file.parent.name, model.labels)
            if index is not None:
                labels[0] = index
        try:
            built = images.build(position, pixels)
        except cv2.error as exc:  # e.g. an image too small for the resize
            skipped.append(f"{file}: {' '.join(str(exc).split())[:200]}")
            continue
        budget.add(samples, Sample((built,), labels, str(file)))
    if not samples:
        raise OptimizeError(f"{path}: none of its {len(files)} image files could be read (e.g. {skipped[0]})")
    return Dataset("images", str(path), tuple(samples), tuple(skipped))


def video_file(path: Path, model: ModelInputs, max_samples: int) -> Dataset:
    """Frames of a video, spread evenly over it when it has more than ``max_samples``."""
    import cv2

    position = _only_image_input(model, "video", path)
    # FFmpeg's own complaints ("moov atom not found") would add lines to our one-line error
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise OptimizeError(f"{path}: OpenCV cannot open this video")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        step = max(1, count // max_samples) if count > 0 else 1
        images = _Images(model)
        samples: list[Sample] = []
        budget = _Budget(path)
        n = 0
        while len(samples) < max_samples:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if n % step == 0:
                pixels = np.asarray(frame, dtype=np.uint8)
                budget.add(samples, Sample((images.build(position, pixels),), {}, f"{path}#{n}"))
            n += 1
    finally:
        capture.release()
    if not samples:
        raise OptimizeError(f"{path}: no frame could be decoded from this video")
    return Dataset("video", str(path), tuple(samples))


def _match_key(keys: Sequence[str], name: str, spec: TensorSpec, single: bool) -> str | None:
    for key in keys:
        if key in (name, f"{name}s", spec.name):  # "images" feeds the input "image"
            return key
    if single:
        candidates = [k for k in keys if not k.endswith("labels")]
        if len(candidates) == 1:
            return candidates[0]
    return None


def _npz_sample_input(
    array: npt.NDArray[Any], i: int, position: int, model: ModelInputs, images: _Images, where: str
) -> npt.NDArray[np.float32]:
    spec = model.inputs[position]
    item = array[i]
    if array.dtype == np.uint8 and position in images.builders and item.ndim in (2, 3):
        return images.build(position, np.ascontiguousarray(item))
    size = int(np.prod(spec.shape))
    if item.size != size:
        raise OptimizeError(
            f"{where}: array {list(array.shape)} gives samples of shape {list(item.shape)}, but input "
            f"{model.input_names[position]!r} takes {list(spec.shape)}"
        )
    return np.asarray(item, dtype=np.float32).reshape(spec.shape)


def npz_arrays(path: Path, model: ModelInputs, max_samples: int) -> Dataset:
    """Arrays ``[N, ...]`` named by input (signature or tensor name); uint8 pixel arrays of an image
    input go through the image preprocessing, other arrays are the input's real values."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise OptimizeError(f"{path}: not a readable .npz file: {exc}") from exc
    if not arrays:
        raise OptimizeError(f"{path}: the .npz holds no arrays")
    keys = sorted(arrays)
    single = len(model.inputs) == 1
    chosen: list[str] = []
    for name, spec in zip(model.input_names, model.inputs, strict=True):
        key = _match_key(keys, name, spec, single)
        if key is None:
            raise OptimizeError(f"{path}: no array for input {name!r} {spec.describe()}; arrays are {keys}")
        chosen.append(key)
    counts = {k: len(arrays[k]) if arrays[k].ndim else 0 for k in chosen}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise OptimizeError(
            f"{path}: the input arrays must have the same, non-zero first dimension: {counts}"
        )
    label_keys: dict[int, str] = {}
    for position, out in enumerate(model.output_names):
        for key in (f"{out}_labels", "labels" if len(model.output_names) == 1 else ""):
            if key in arrays:
                label_keys[position] = key
                break
    images = _Images(model)
    total = min(next(iter(counts.values())), max_samples)
    samples: list[Sample] = []
    budget = _Budget(path)
    for i in range(total):
        inputs = tuple(
            _npz_sample_input(arrays[k], i, p, model, images, str(path)) for p, k in enumerate(chosen)
        )
        labels = {p: int(arrays[k][i]) for p, k in label_keys.items() if i < len(arrays[k])}
        budget.add(samples, Sample(inputs, labels, f"{path}#{i}"))
    return Dataset("npz", str(path), tuple(samples))


def _capture_image(meta_path: Path, meta: Mapping[str, Any]) -> Path | None:
    named = meta.get("image")
    if isinstance(named, str):
        return meta_path.parent / Path(named).name
    for suffix in (".jpg", ".jpeg", ".png"):
        candidate = meta_path.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def captures(path: Path, model: ModelInputs, max_samples: int) -> Dataset:
    """A folder of daemon captures: ``NAME.json`` (``label``, optional ``inputs`` of non-image
    inputs by name) beside ``NAME.jpg``."""
    metas = sorted(path.glob("*.json"))
    images = _Images(model)
    image_positions = list(images.builders)
    if len(image_positions) != 1:
        raise OptimizeError(f"{path}: captures feed a model with exactly one image input")
    samples: list[Sample] = []
    skipped: list[str] = []
    budget = _Budget(path)
    for meta_path in metas:
        if len(samples) >= max_samples:
            break
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            skipped.append(f"{meta_path}: {exc}")
            continue
        image_path = _capture_image(meta_path, meta)
        pixels = _read_image(image_path) if image_path is not None and image_path.is_file() else None
        if pixels is None:
            skipped.append(f"{meta_path}: no readable image beside it")
            continue
        inputs: list[npt.NDArray[np.float32]] = []
        ok = True
        for position, (name, spec) in enumerate(zip(model.input_names, model.inputs, strict=True)):
            if position in images.builders:
                inputs.append(images.build(position, pixels))
                continue
            raw = (meta.get("inputs") or {}).get(name)
            values = np.asarray(raw, dtype=np.float32) if raw is not None else None
            if values is None or values.size != int(np.prod(spec.shape)):
                skipped.append(f"{meta_path}: no input {name!r} of {list(spec.shape)} values")
                ok = False
                break
            inputs.append(values.reshape(spec.shape))
        if not ok:
            continue
        labels: dict[int, int] = {}
        label = meta.get("label")
        if label is not None and len(model.output_names) == 1:
            index = _label_index(str(label), model.labels)
            if index is not None:
                labels[0] = index
        budget.add(samples, Sample(tuple(inputs), labels, str(meta_path)))
    if not samples:
        first = f" (e.g. {skipped[0]})" if skipped else ""
        raise OptimizeError(f"{path}: no usable capture (NAME.json + NAME.jpg pairs){first}")
    return Dataset("captures", str(path), tuple(samples), tuple(skipped))


def load(source: str | Path, model: ModelInputs, max_samples: int) -> Dataset:
    """Read calibration data, choosing the adapter by what ``source`` is."""
    path = Path(source)
    if not 1 <= max_samples <= MAX_SAMPLES_LIMIT:
        raise OptimizeError(f"--max-samples must be 1..{MAX_SAMPLES_LIMIT}, got {max_samples}")
    if not path.exists():
        raise OptimizeError(f"{path}: no such file or folder")
    if path.is_dir():
        entries = list(path.iterdir())
        if not entries:
            raise OptimizeError(f"{path}: the calibration folder is empty")
        if any(p.suffix == ".json" for p in entries) and not any(p.is_dir() for p in entries):
            return captures(path, model, max_samples)
        return image_folder(path, model, max_samples)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return npz_arrays(path, model, max_samples)
    if suffix in VIDEO_SUFFIXES:
        return video_file(path, model, max_samples)
    raise OptimizeError(
        f"{path}: calibration data must be a folder of images or captures, a video "
        f"({', '.join(sorted(VIDEO_SUFFIXES))}) or an .npz"
    )


def split(
    samples: Sequence[Sample], calibration_share: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Shuffle once (fixed seed) and cut: (calibration, held-out verification); never overlapping."""
    if len(samples) < 2:
        raise OptimizeError(f"need at least 2 samples (one to calibrate, one to verify), got {len(samples)}")
    order = np.random.default_rng(seed).permutation(len(samples))
    cut = min(max(1, round(len(samples) * calibration_share)), len(samples) - 1)
    shuffled = [samples[i] for i in order]
    return shuffled[:cut], shuffled[cut:]
