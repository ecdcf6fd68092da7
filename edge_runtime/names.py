"""Names and identifiers shared by the config, the topics, the update protocol and the fleet tool.

One definition each, so a name the config accepts is one the update protocol and the fleet tool
accept too.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
"""A pipeline, source or device name: usable as one MQTT topic level and as a file name."""
NAME_RULE = "must be 1-64 letters, digits, '_', '.' or '-' (no MQTT wildcards or '/')"

SAFE_LEVEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
"""A topic level made of data from outside (a device id, a request id): no wildcard, no '/'."""

SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
"""A sha256 in lower-case hex."""

TRANSFER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
"""The id of a chunked model transfer (a directory name under the state directory)."""
