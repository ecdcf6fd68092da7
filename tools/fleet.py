"""fleet.py: the fleet tool from a checkout, for scripts written before ``edge-fleet`` existed.

Same as the ``edge-fleet`` command that ``pip install 'edge-runtime[fleet]'`` installs (the code is
``edge_runtime/fleet``; docs/fleet.md is the manual).
"""

from __future__ import annotations

import sys

from edge_runtime.fleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
