"""Write a drift reference for a model from a held-out set (see docs/monitoring.md, "Drift").

    .venv/bin/python tools/monitor_reference.py MODEL --data heldout.npz --labels labels.txt --out ref.json
    .venv/bin/python tools/monitor_reference.py edge_runtime/models/fused_int8.tflite \\
        --data edge_runtime/models/fused_heldout.npz \\
        --head state=0:edge_runtime/models/fused_state_labels.txt \\
        --head digit=1:edge_runtime/models/digits_labels.txt --manifest edge_runtime/models/manifest.json
    .venv/bin/python tools/monitor_reference.py edge_runtime/models/detect_int8.tflite --detection \\
        --data edge_runtime/models/detect_heldout.npz --labels edge_runtime/models/digits_labels.txt \\
        --out ref.json
    .venv/bin/python tools/monitor_reference.py --bundled   # every bundled model with a held-out set
    .venv/bin/python tools/monitor_reference.py --bundled --check   # exit 1 when one is stale

Inputs: each model input is fed the .npz array named like it (``vibration`` for the input
``serving_default_vibration:0``), else ``images`` (``--map INPUT=ARRAY`` to say otherwise). uint8
arrays are 0-255 pixels divided by ``--std`` (255); float arrays are fed as they are (real units);
both are then quantized as the pipeline does. The reference holds, per input, a ``--bins``-bin
histogram per channel of the values as fed (and for an image the orientation statistic) and, of
the outputs: the top-1 class rates and confidence histogram (one head: ``--labels``, output 0;
several: ``--head NAME=OUTPUT:LABELS``), or for ``--detection`` (YOLO-style, decoded with
``--min-score`` and ``--iou`` as the pipeline does) the class rates of the boxes, their score
histogram and the boxes per frame. ``--manifest`` stores it as ``monitor_reference`` in the
model's entry (by file name) of that manifest, where the daemon finds it; ``--out`` writes it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.monitor.drift import checked, detection_reference, reference
from edge_runtime.monitor.inputdrift import BINS, as_fed, input_reference
from edge_runtime.postprocess import DetectionConfig, make_head
from edge_runtime.runtime.model import Model, TensorSpec
from edge_runtime.runtime.quant import dequantize

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "edge_runtime" / "models"
# (manifest, model file, held-out set, how): every bundled model with a held-out set
BUNDLED: list[tuple[str, str, str, dict[str, Any]]] = [
    ("manifest.json", "digits_int8.tflite", "digits_heldout.npz", {"labels": "digits_labels.txt"}),
    ("manifest_onnx.json", "digits_int8.onnx", "digits_heldout.npz", {"labels": "digits_labels.txt"}),
    ("manifest_onnx.json", "digits.onnx", "digits_heldout.npz", {"labels": "digits_labels.txt"}),
    (
        "manifest.json",
        "fused_int8.tflite",
        "fused_heldout.npz",
        {"heads": {"state": (0, "fused_state_labels.txt"), "digit": (1, "digits_labels.txt")}},
    ),
    (
        "manifest_onnx.json",
        "fused_int8.onnx",
        "fused_heldout.npz",
        {"heads": {"state": (0, "fused_state_labels.txt"), "digit": (1, "digits_labels.txt")}},
    ),
    (
        "manifest.json",
        "detect_int8.tflite",
        "detect_heldout.npz",
        {"labels": "digits_labels.txt", "detection": True},
    ),
    (
        "manifest_onnx.json",
        "detect_int8.onnx",
        "detect_heldout.npz",
        {"labels": "digits_labels.txt", "detection": True},
    ),
]


def short(spec: TensorSpec) -> str:
    """``vibration`` of ``serving_default_vibration:0``."""
    return spec.name.split(":")[0].removeprefix("serving_default_")


def fed_inputs(
    model: Model, data: dict[str, npt.NDArray[Any]], mapping: dict[str, str], std: float
) -> list[npt.NDArray[Any]]:
    """Per model input, the held-out arrays as fed (``[N, *input shape]``)."""
    fed = []
    for spec in model.inputs:
        name = mapping.get(short(spec)) or mapping.get(spec.name)
        name = name or (short(spec) if short(spec) in data else "images")
        if name not in data:
            raise SystemExit(f"no array {name!r} in the data for input {spec.name!r} (use --map)")
        arr = np.asarray(data[name])
        real = arr / std if arr.dtype == np.uint8 else arr.astype(np.float64)
        fed.append(as_fed(real.reshape((len(arr), *spec.shape[1:])), spec))
    return fed


def outputs_of(model: Model, fed: list[npt.NDArray[Any]]) -> list[list[npt.NDArray[np.float32]]]:
    """Every output of every held-out sample, dequantized: ``[output][sample]``."""
    rows: list[list[npt.NDArray[np.float32]]] = [[] for _ in model.outputs]
    for i in range(len(fed[0])):
        outs = model.invoke([x[i : i + 1] for x in fed])
        for k, (spec, out) in enumerate(zip(model.outputs, outs, strict=True)):
            rows[k].append(dequantize(out, spec.quant) if spec.quant is not None else out.astype(np.float32))
    return rows


def labels_of(path: str | Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def build(
    model_path: Path,
    data_path: Path,
    *,
    labels: str | None = None,
    heads: dict[str, tuple[int, str]] | None = None,
    detection: bool = False,
    mapping: dict[str, str] | None = None,
    std: float = 255.0,
    bins: int = BINS,
    min_score: float = 0.4,
    iou: float = 0.45,
) -> dict[str, Any]:
    """The reference of ``model_path`` on the held-out set ``data_path``."""
    model = Model(model_path)
    with np.load(data_path) as npz:
        data = {k: npz[k] for k in npz.files}
    fed = fed_inputs(model, data, mapping or {}, std)
    outputs = outputs_of(model, fed)
    if detection:
        if labels is None:
            raise SystemExit("--detection needs --labels")
        names = labels_of(labels)
        head = make_head(
            DetectionConfig(format="yolo", min_score=min_score, iou=iou, labels=names),
            model.outputs,
            names,
            input_size=(int(model.inputs[0].shape[2]), int(model.inputs[0].shape[1])),
        )
        frames = []
        for i in range(len(fed[0])):
            body = head.process([model.invoke([x[i : i + 1] for x in fed])[0]], None)
            frames.append([(names.index(d["label"]), float(d["score"])) for d in body["detections"]])
        ref = detection_reference(frames, names)
    elif heads:
        ref = {
            "v": 1,
            "kind": "heads",
            "samples": len(fed[0]),
            "heads": {
                name: {
                    k: v
                    for k, v in reference(np.asarray(outputs[pos]), labels_of(lab)).items()
                    if k not in ("v", "kind")
                }
                for name, (pos, lab) in heads.items()
            },
        }
    else:
        if labels is None:
            raise SystemExit("give --labels (one head), --head (several) or --detection")
        ref = reference(np.asarray(outputs[0]), labels_of(labels))
    ref["inputs"] = [
        input_reference(x, name=spec.name, position=spec.position, bins=bins)
        for spec, x in zip(model.inputs, fed, strict=True)
    ]
    return checked(ref, str(model_path))


def store(manifest: Path, model_file: str, ref: dict[str, Any]) -> None:
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    entries = [e for e in doc["models"].values() if e.get("file") == model_file]
    if len(entries) != 1:
        raise SystemExit(f"{manifest} has no single entry with file {model_file}")
    entries[0]["monitor_reference"] = ref
    manifest.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def bundled(check: bool = False) -> int:
    """Write (or with ``check``, compare) the reference of every bundled model; the number stale."""
    stale = 0
    for manifest, model_file, data, how in BUNDLED:
        labels = str(MODELS / how["labels"]) if "labels" in how else None
        heads = {n: (p, str(MODELS / lab)) for n, (p, lab) in how.get("heads", {}).items()} or None
        ref = build(
            MODELS / model_file,
            MODELS / data,
            labels=labels,
            heads=heads,
            detection=bool(how.get("detection")),
        )
        if check:
            doc = json.loads((MODELS / manifest).read_text(encoding="utf-8"))
            stored = [
                e.get("monitor_reference") for e in doc["models"].values() if e.get("file") == model_file
            ]
            same = stored == [json.loads(json.dumps(ref))]
            stale += not same
            print(f"{manifest}: {model_file}: {'up to date' if same else 'STALE'}", file=sys.stderr)
            continue
        store(MODELS / manifest, model_file, ref)
        print(
            f"{manifest}: {model_file}: {ref['kind']} reference from {ref['samples']} samples",
            file=sys.stderr,
        )
    return stale


def pair(text: str, sep: str = "=") -> tuple[str, str]:
    key, _, value = text.partition(sep)
    if not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME{sep}VALUE")
    return key, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    ap.add_argument("model", nargs="?", help="the .tflite or .onnx model")
    ap.add_argument("--bundled", action="store_true", help="rewrite the references of every bundled model")
    ap.add_argument(
        "--check", action="store_true", help="with --bundled: exit 1 if a stored reference is stale"
    )
    ap.add_argument("--data", help=".npz held-out set (images: uint8 0-255; other arrays: real units)")
    ap.add_argument("--labels", help="one label a line (one classification head, or --detection)")
    ap.add_argument("--head", action="append", type=pair, default=[], help="NAME=OUTPUT:LABELS, one per head")
    ap.add_argument(
        "--detection", action="store_true", help="a YOLO-style detector (one [1, N, 5 + C] output)"
    )
    ap.add_argument("--min-score", type=float, default=0.4, help="--detection: lowest box score (0.4)")
    ap.add_argument("--iou", type=float, default=0.45, help="--detection: NMS IoU (0.45)")
    ap.add_argument(
        "--map", action="append", type=pair, default=[], help="INPUT=ARRAY: which array feeds an input"
    )
    ap.add_argument("--std", type=float, default=255.0, help="uint8 arrays are divided by this (255)")
    ap.add_argument("--bins", type=int, default=BINS, help=f"histogram bins per input channel ({BINS})")
    ap.add_argument("--out", help="write the reference to this file")
    ap.add_argument("--manifest", help="store it as monitor_reference in this manifest's entry for the model")
    args = ap.parse_args(argv)
    if args.bundled:
        return 1 if bundled(args.check) else 0
    if not args.model or not args.data:
        ap.error("give MODEL and --data (or --bundled)")
    if not args.out and not args.manifest:
        ap.error("give --out, --manifest or both")
    if not 2 <= args.bins <= 256:
        ap.error("--bins must be 2 to 256")
    heads = {}
    for name, spec in args.head:
        pos, _, lab = spec.partition(":")
        if not pos.isdigit() or not lab:
            ap.error(f"--head {name}={spec}: expected NAME=OUTPUT:LABELS")
        heads[name] = (int(pos), lab)
    ref = build(
        Path(args.model),
        Path(args.data),
        labels=args.labels,
        heads=heads or None,
        detection=args.detection,
        mapping=dict(args.map),
        std=args.std,
        bins=args.bins,
        min_score=args.min_score,
        iou=args.iou,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    if args.manifest:
        store(Path(args.manifest), Path(args.model).name, ref)
    print(f"reference: {ref['kind']}, {ref['samples']} samples, {len(ref['inputs'])} inputs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
