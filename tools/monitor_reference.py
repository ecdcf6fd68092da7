"""Write a drift reference for a model from a held-out set (see edge_runtime/monitor/drift.py).

    .venv/bin/python tools/monitor_reference.py MODEL --data heldout.npz --labels labels.txt --out ref.json
    (or --manifest edge_runtime/models/manifest.json: stored in the model's manifest entry, where the
    daemon finds it)

The .npz holds ``images`` already in the model's input layout as 0-255 values (the bundled
``*_heldout.npz`` sets): each is scaled by ``--std`` (255), quantized like the pipeline does, run,
and the class scores of output 0 are turned into the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_runtime.monitor.drift import model_scores, reference
from edge_runtime.runtime.model import Model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help=".npz with 'images'")
    ap.add_argument("--labels", required=True, help="one label a line")
    ap.add_argument("--std", type=float, default=255.0)
    ap.add_argument("--out", help="write the reference to this file")
    ap.add_argument(
        "--manifest",
        help="store it as monitor_reference in this manifest.json's entry for the model (by file name)",
    )
    args = ap.parse_args(argv)
    labels = Path(args.labels).read_text(encoding="utf-8").splitlines()
    with np.load(args.data) as data:
        images = data["images"]
    ref = reference(model_scores(Model(args.model), images, args.std), labels)
    if not args.out and not args.manifest:
        ap.error("give --out, --manifest or both")
    if args.out:
        Path(args.out).write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    if args.manifest:
        manifest = Path(args.manifest)
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        entries = [e for e in doc["models"].values() if e.get("file") == Path(args.model).name]
        if len(entries) != 1:
            ap.error(f"{manifest} has no single entry with file {Path(args.model).name}")
        entries[0]["monitor_reference"] = ref
        manifest.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"reference: {ref['samples']} samples, {len(labels)} classes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
