"""Write a drift reference for a model from a held-out set (see edge_runtime/monitor/drift.py).

    .venv/bin/python tools/monitor_reference.py MODEL --data heldout.npz --labels labels.txt --out ref.json

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
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    labels = Path(args.labels).read_text(encoding="utf-8").splitlines()
    with np.load(args.data) as data:
        images = data["images"]
    ref = reference(model_scores(Model(args.model), images, args.std), labels)
    Path(args.out).write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: {ref['samples']} samples, {len(labels)} classes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
