"""fleet.py: operate a fleet of edge-runtime devices over MQTT (status, keygen, sign, update, rollback).

    python tools/fleet.py status [--broker HOST:PORT] [--devices GLOB] [--json]
    python tools/fleet.py keygen --out DIR
    python tools/fleet.py sign MODEL --pipeline P --version V --key fleet.key
    python tools/fleet.py update --model M --pipeline P --version V --key fleet.key [--canary 1] ...
    python tools/fleet.py rollback --pipeline P [--devices GLOB]

Needs the installed edge-runtime package with its ``fleet`` extra (rich). The code lives in the
``edge_fleet`` package next to this file (tools/fleet/edge_fleet); docs/fleet.md is the manual.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fleet"))

from edge_fleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
