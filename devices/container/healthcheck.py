#!/usr/bin/python3
"""Container health probe of edge-runtime: GET a probe path of the daemon's local HTTP API.

Installed in the image as ``/usr/local/bin/edge-runtime-healthcheck``; the image's HEALTHCHECK and
the Kubernetes liveness and readiness probes (``exec``) run it inside the container, so the API can
stay bound to the loopback address (no bearer token needed: ``/healthz`` and ``/readyz`` are open).

    edge-runtime-healthcheck            GET /healthz: exit 0 on 200, else 1 with the cause on stderr
    edge-runtime-healthcheck /readyz    the readiness probe

The port is ``$EDGE_RUNTIME__HTTP__PORT`` (the same variable that overrides ``http.port`` in the
daemon's config), else 8478, the default of ``[http] port``.
Standard library only; a 4 s deadline.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "8478"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = os.environ.get("EDGE_RUNTIME__HTTP__PORT") or DEFAULT_PORT
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = int(response.status)
            body = response.read(300).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}: {exc.read(300).decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}: {body}", file=sys.stderr)
        return 1
    print(f"{url}: {body}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
