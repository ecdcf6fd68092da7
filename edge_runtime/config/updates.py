"""The ``[updates]`` table: who may change the device's models, and within which bounds
(signatures, downloads, chunked transfers, probation). See docs/security.md, "Model updates"."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UpdatesConfig(Strict):
    public_keys: list[str] = Field(
        default_factory=list,
        description="Base64 ed25519 public keys of the fleet; once one is set, unsigned updates are refused.",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=1 << 34, description="Largest model an update may download."
    )
    download_timeout_s: float = Field(
        120.0, gt=0, le=86400, description="Wall-clock bound on a whole download (connect to last byte)."
    )
    keep: int = Field(
        3, ge=2, le=20, description="Model versions kept per pipeline (current and previous at least)."
    )
    probation_s: float = Field(30.0, gt=0, le=86400, description="Longest probation of a new model.")
    probation_results: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Results the new model must produce before it can be committed; fewer by the "
        "end of probation_s fails the probation.",
    )
    max_latency_factor: float = Field(
        3.0, gt=1, le=1000, description="Invoke p95 over this factor of the old one fails."
    )
    latency_floor_ms: float = Field(
        5.0,
        ge=0,
        le=60_000,
        description="...and only when it is also this much slower (small models jitter).",
    )
    fail_on_constant: bool = Field(True, description="Outputs identical over the whole probation fail it.")
    # -- transport limits (issue 11: updates safe by construction) --
    allow_file_urls: bool = Field(
        False,
        description="Accept file:// URLs in model.update. For tests only: with it, anyone who may "
        "publish commands chooses a local file.",
    )
    redirect_hosts: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Hosts a download may be redirected to besides the URL's own (default: none).",
    )
    max_transfers: int = Field(
        2, ge=1, le=64, description="MQTT chunked transfers in progress at once (partial or unused)."
    )
    transfer_quota_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        le=2**40,
        description="Disk all chunked transfers may hold together.",
    )
    transfer_expiry_s: float = Field(
        300.0, ge=1, le=86400, description="A chunked transfer untouched this long is removed."
    )

    @field_validator("redirect_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,253}", host):
                raise ValueError(f"redirect host {host!r} must be a host name or an address")
        return [h.lower().strip("[]") for h in value]
