"""``[http]``: the local HTTP API and page (``edge_runtime.http``).

Enabled by default on the loopback address, where no token is needed; bound to any other address
it needs ``token_file`` (a bearer token, first line of the file), so ``validate-config`` and
``run`` both refuse a config that would open the device's API to the network without one.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

DEFAULT_PORT = 8478  # not used by any common Prometheus exporter (9100-9999), Frigate (5000) or Grafana


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpTlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: str = Field("", description="PEM certificate (chain) file; empty: plain HTTP.")
    key: str = Field("", validate_default=True, description="PEM private key file of the certificate.")

    @field_validator("key")
    @classmethod
    def _pair(cls, key: str, info: ValidationInfo) -> str:
        if bool(key) != bool(info.data.get("cert")):
            raise ValueError("http.tls needs both cert and key, or neither")
        return key


class PredictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interpreter: Literal["pipeline", "own"] = Field(
        "pipeline",
        description="Run requests on the pipeline's interpreter between two of its inferences "
        "(no extra memory) or on an interpreter of their own (loaded on first use).",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Instances in one request at most.")
    max_pending: int = Field(
        8, ge=1, le=256, description="Requests running or waiting at most; more get 503."
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Bound on one request's wait and run.")


class HttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Serve the local HTTP API and page.")
    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on; not loopback needs token_file."
    )
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Port (0: any free one, logged).")
    token_file: str = Field(
        "",
        validate_default=True,
        description="File whose first line is the bearer token clients must send; required unless "
        "host is a loopback address. Never logged.",
    )
    tls: HttpTlsConfig = Field(default_factory=HttpTlsConfig, description="HTTPS certificate and key.")
    max_connections: int = Field(
        32, ge=2, le=4096, description="Open connections at most; more are closed at once."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024, description="Larger request bodies get 413."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A request's headers must arrive within this (slow clients)."
    )
    body_timeout_s: float = Field(30.0, gt=0, le=600, description="A request's body must arrive within this.")
    keepalive_s: int = Field(5, ge=1, le=300, description="Idle keep-alive connections close after this.")
    max_stream_clients: int = Field(
        8, ge=1, le=256, description="Server-Sent-Events and MJPEG clients at once, at most."
    )
    stream_queue: int = Field(
        256,
        ge=8,
        le=65536,
        description="Messages waiting for one stream client; a client that falls this far behind is dropped.",
    )
    mjpeg_fps: float = Field(5.0, gt=0, le=30, description="Frame rate cap of MJPEG live views.")
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of snapshots and live views.")
    ready_max_age_s: float = Field(
        10.0, gt=0, le=3600, description="/readyz: each pipeline's latest result is at most this old."
    )
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Predict on demand.")

    @field_validator("token_file")
    @classmethod
    def _token_off_loopback(cls, token_file: str, info: ValidationInfo) -> str:
        host = info.data.get("host")
        if host is not None and not token_file and not is_loopback(host) and info.data.get("enabled", True):
            raise ValueError(
                f"http.host {host!r} is not a loopback address: a token_file (bearer token) is required"
            )
        return token_file
