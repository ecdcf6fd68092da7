"""Model updates: signatures, downloads (a real HTTP server), chunked transfers, the candidate
checks on the bundled models, and the on-device store, including kill -9 at random moments."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import os
import random
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from devkit.paths import MODELS, ROOT
from devkit.pki import TestPki
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.fsutil import sha256_file
from edge_runtime.runtime.model import Model, TensorSpec
from edge_runtime.runtime.quant import QuantParams, quantize
from edge_runtime.updates import signing
from edge_runtime.updates.checks import (
    check_compatible,
    isolated_check,
    neutral_inputs,
    smoke_invoke,
    verify_sha256,
)
from edge_runtime.updates.protocol import (
    ChecksumError,
    StoreError,
    UpdateError,
    UpdateRequest,
    reference_digest,
)
from edge_runtime.updates.signing import SignedFields
from edge_runtime.updates.store import ModelStore
from edge_runtime.updates.transfer import ChunkAssembler, DownloadPolicy, download

DIGITS = MODELS / "digits_int8.tflite"
DIGITS_BYTES = DIGITS.read_bytes()
DIGITS_SHA = hashlib.sha256(DIGITS_BYTES).hexdigest()


def refused(step: str, exc: pytest.ExceptionInfo[UpdateError]) -> str:
    assert exc.value.step == step, f"step {exc.value.step!r}, expected {step!r}: {exc.value}"
    assert isinstance(exc.value, EdgeRuntimeError) and isinstance(exc.value, ValueError)
    return str(exc.value)


# --- signing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return signing.generate_keypair()


SIZE = len(DIGITS_BYTES)


def fields(
    pipeline: str = "digits", version: str = "2", sha: str = DIGITS_SHA, size: int = SIZE
) -> SignedFields:
    return SignedFields.update(pipeline, version, sha, size)


def test_signed_message_is_canonical() -> None:
    message = signing.signed_message(SignedFields.update("digits", "2.1", "AB" * 32, 45411))
    assert message == (
        b"edge-runtime-model-v2\naction=update\npipeline=digits\nversion=2.1\nsha256=" + b"ab" * 32
        + b"\nsize=45411\nrollback_from=\n"
    )  # fmt: skip
    rollback = signing.signed_message(SignedFields.rollback("digits", "1", "2"))
    assert rollback == (
        b"edge-runtime-model-v2\naction=rollback\npipeline=digits\nversion=1\nsha256=\nsize=\nrollback_from=2\n"
    )
    for bad in [
        fields(pipeline="a\nb"),
        fields(version="1\r"),
        fields(version=""),
        fields(sha="x"),
        fields(size=0),
        SignedFields.update("p", "1", DIGITS_SHA, 1, "2\n3"),
        SignedFields.rollback("p", "1", ""),
    ]:
        with pytest.raises(UpdateError) as exc:
            signing.signed_message(bad)
        refused("signature", exc)


def test_a_drift_reference_adds_one_signed_line_and_only_with_a_reference() -> None:
    ref = {"v": 1, "kind": "top1", "labels": ["a"], "class_rates": [1.0], "confidence_hist": [[0] * 10]}
    digest = reference_digest(ref)
    assert digest == reference_digest(json.loads(json.dumps(ref, indent=3)))  # key order, spacing: same
    plain = signing.signed_message(SignedFields.update("digits", "2", DIGITS_SHA, SIZE))
    with_ref = signing.signed_message(SignedFields.update("digits", "2", DIGITS_SHA, SIZE, None, digest))
    assert with_ref == plain + f"reference_sha256={digest}\n".encode()
    request = UpdateRequest.from_payload(
        {"id": "u", "pipeline": "digits", "url": "http://x/m", "sha256": DIGITS_SHA, "size": SIZE,
         "version": "2", "reference": ref}
    )  # fmt: skip
    assert request.reference_sha256 == digest
    for bad in ({"v": 2}, [1, 2], {**ref, "class_rates": [float("nan")]}, {**ref, "labels": ["a", "b"]}):
        with pytest.raises(UpdateError) as exc:
            UpdateRequest.from_payload(
                {"id": "u", "pipeline": "digits", "url": "http://x/m", "sha256": DIGITS_SHA, "size": SIZE,
                 "version": "2", "reference": bad}
            )  # fmt: skip
        refused("request", exc)
    with pytest.raises(UpdateError) as exc:
        signing.signed_message(SignedFields("rollback", "digits", "1", "", 0, "2", digest))
    refused("signature", exc)


def test_signature_good_and_with_several_keys(keys: tuple[bytes, str]) -> None:
    private, public = keys
    other = signing.generate_keypair()[1]
    assert len(base64.b64decode(public)) == 32
    signature = signing.sign(private, fields())
    assert signing.verify([public], fields(), signature) is True
    assert signing.verify([other, public], fields(sha=DIGITS_SHA.upper()), signature) is True


@pytest.mark.parametrize(
    "tampered",
    [
        fields(pipeline="fused"),
        fields(version="3"),
        fields(sha="0" * 64),
        fields(size=SIZE + 1),
        SignedFields.update("digits", "2", DIGITS_SHA, SIZE, "1"),
        SignedFields.rollback("digits", "2", "1"),
    ],
    ids=["pipeline", "version", "sha256", "size", "rollback_from", "action"],
)
def test_signature_over_tampered_fields_is_refused(keys: tuple[bytes, str], tampered: SignedFields) -> None:
    private, public = keys
    signature = signing.sign(private, fields())
    with pytest.raises(UpdateError) as exc:
        signing.verify([public], tampered, signature)
    assert "matches none" in refused("signature", exc)


def test_a_v1_signature_is_refused(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    private, public = keys
    key = signing.load_private_key(signing.write_private_key(tmp_path / "k.pem", private))
    v1 = b"edge-runtime-model-v1\ndigits\n2\n" + DIGITS_SHA.encode() + b"\n"  # what 0.1 signed
    with pytest.raises(UpdateError) as exc:
        signing.verify([public], fields(), base64.b64encode(key.sign(v1)).decode())
    assert "edge-runtime-model-v1" in refused("signature", exc)


def test_signature_refusals(keys: tuple[bytes, str]) -> None:
    private, public = keys
    wrong_private = signing.generate_keypair()[0]
    signature = signing.sign(wrong_private, fields())
    with pytest.raises(UpdateError) as exc:
        signing.verify([public], fields(), signature)
    assert "matches none of the 1" in refused("signature", exc)
    for unsigned in (None, ""):
        with pytest.raises(UpdateError) as exc:
            signing.verify([public], fields(), unsigned)
        assert "unsigned" in refused("signature", exc)
    for garbage in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(UpdateError) as exc:
            signing.verify([public], fields(), garbage)
        assert "signature" in refused("signature", exc)
    with pytest.raises(UpdateError) as exc:
        signing.verify(["AAAA"], fields(), signing.sign(private, fields()))
    assert "configured public key 0" in refused("signature", exc)


def test_no_keys_configured_accepts_unsigned_and_ignores_a_signature(
    keys: tuple[bytes, str], caplog: pytest.LogCaptureFixture
) -> None:
    assert signing.verify([], fields(), None) is False
    with caplog.at_level(logging.WARNING, logger="edge_runtime.updates.signing"):
        assert signing.verify([], fields(), "garbage") is False
    assert "signature ignored" in caplog.text


def test_private_key_files(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    private, public = keys
    path = signing.write_private_key(tmp_path / "operator.pem", private)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "operator.pem"]
    with pytest.raises(UpdateError, match="refusing to overwrite"):
        signing.write_private_key(path, signing.generate_keypair()[0])
    key = signing.load_private_key(path)
    signature = base64.b64encode(key.sign(signing.signed_message(fields("p", "1")))).decode()
    signing.verify([public], fields("p", "1"), signature)
    path.chmod(0o644)
    with pytest.raises(UpdateError) as exc:
        signing.load_private_key(path)
    assert "mode 0644" in refused("signature", exc) and "chmod 600" in str(exc.value)
    (tmp_path / "junk.pem").write_bytes(b"junk")
    (tmp_path / "junk.pem").chmod(0o600)
    with pytest.raises(UpdateError, match="not an unencrypted PEM"):
        signing.load_private_key(tmp_path / "junk.pem")


# --- download -----------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    release: threading.Event


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _headers(self, status: int, length: int | None, **extra: str) -> None:
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        try:
            if path == "/model.tflite":
                self._headers(200, len(DIGITS_BYTES))
                self.wfile.write(DIGITS_BYTES)
            elif path == "/truncated":
                self.close_connection = True
                self._headers(200, len(DIGITS_BYTES))
                self.wfile.write(DIGITS_BYTES[: len(DIGITS_BYTES) // 2])
            elif path == "/slow":
                self.server.release.wait(10)
            elif path == "/trickle":
                self._headers(200, 10**6)
                while not self.server.release.wait(0.02):
                    self.wfile.write(b"x" * 1024)
            elif path == "/endless":
                self.close_connection = True
                self._headers(200, None, Connection="close")
                for _ in range(10**4):
                    self.wfile.write(b"x" * 65536)
            elif path == "/announced-huge":
                self.close_connection = True
                self._headers(200, 10**9)
                self.wfile.write(b"x" * 1024)
            elif path == "/redirect":
                self._headers(302, 0, Location="/model.tflite")
            elif path == "/redirect-ftp":
                self._headers(302, 0, Location="ftp://127.0.0.1/model.tflite")
            else:
                self._headers(404, 0)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def tls_server(pki: TestPki) -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.release = threading.Event()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def _fetch(url: str, dest: Path, **kwargs: Any) -> pytest.ExceptionInfo[UpdateError]:
    options: dict[str, Any] = {"max_bytes": 10**6, "timeout_s": 5.0, **kwargs}
    with pytest.raises(UpdateError) as exc:
        download(url, dest, **options)
    assert not dest.exists(), "a failed download left its destination"
    assert not dest.with_name(dest.name + ".part").exists(), "a failed download left its .part file"
    return exc


def test_download_http_and_redirect(server: str, tmp_path: Path) -> None:
    for path in ("/model.tflite", "/redirect"):
        dest = download(server + path, tmp_path / "m.tflite", max_bytes=10**6, timeout_s=5)
        assert dest.read_bytes() == DIGITS_BYTES
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600
        verify_sha256(dest, DIGITS_SHA.upper())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
    size = len(DIGITS_BYTES)
    url = server + "/model.tflite"
    exact = download(url, tmp_path / "x", max_bytes=10**6, timeout_s=5, expected_size=size)
    assert exact.stat().st_size == len(DIGITS_BYTES)


def test_download_https_verifies_the_server(tls_server: str, pki: TestPki, tmp_path: Path) -> None:
    dest = tmp_path / "m.tflite"
    assert "CERTIFICATE_VERIFY_FAILED" in refused("download", _fetch(tls_server + "/model.tflite", dest))
    message = refused("download", _fetch(tls_server + "/model.tflite", dest, ca_file=pki.other_ca_cert))
    assert "CERTIFICATE_VERIFY_FAILED" in message
    download(tls_server + "/model.tflite", dest, max_bytes=10**6, timeout_s=5, ca_file=pki.ca_cert)
    verify_sha256(dest, DIGITS_SHA)


def test_download_refusals(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "m.tflite"
    assert "HTTP 404" in refused("download", _fetch(server + "/missing?token=secret", dest))
    assert "secret" not in str(_fetch(server + "/missing?token=secret", dest).value)
    message = refused("download", _fetch(server + "/truncated", dest))
    assert f"truncated: {len(DIGITS_BYTES) // 2} of {len(DIGITS_BYTES)}" in message
    assert "refusing redirect" in refused("download", _fetch(server + "/redirect-ftp", dest))
    size = len(DIGITS_BYTES)
    assert "truncated" in refused("download", _fetch(server + "/model.tflite", dest, expected_size=size + 1))
    assert "more than the announced size" in refused(
        "size", _fetch(server + "/model.tflite", dest, expected_size=size - 1)
    )
    assert "more than the limit" in refused("size", _fetch(server + "/announced-huge", dest))
    assert "exceeds the limit" in refused("size", _fetch(server + "/model.tflite", dest, expected_size=10**7))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "refused" in refused("download", _fetch(f"http://127.0.0.1:{port}/m", dest)).lower()
    for url in ("ftp://127.0.0.1/m", str(DIGITS), "data:,abc"):
        assert "is not allowed; use http or https" in refused("download", _fetch(url, dest))


def test_download_size_limit_stops_an_endless_body(server: str, tmp_path: Path) -> None:
    message = refused("size", _fetch(server + "/endless", tmp_path / "m", max_bytes=300_000))
    assert "more than 300000 bytes" in message  # stopped by the limit, not by the body's end (655 MB)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("m", ".m"))], (
        "a partial file was left"
    )


def test_download_timeouts(server: str, tmp_path: Path) -> None:
    for path, words in (("/slow", "within 0.4 s"), ("/trickle", "not complete within")):
        started = time.monotonic()
        message = refused("download", _fetch(server + path, tmp_path / "m", timeout_s=0.4))
        assert words in message, message
        # the server holds /slow for 10 s and trickles /trickle until released: a download that
        # ends well before that was cut by its 0.4 s deadline (12x margin for a loaded machine)
        assert time.monotonic() - started < 5.0


FILES = DownloadPolicy(allow_file=True)


def test_download_file_url(tmp_path: Path) -> None:
    dest = download(DIGITS.as_uri(), tmp_path / "m", max_bytes=10**6, timeout_s=1, policy=FILES)
    assert sha256_file(dest) == DIGITS_SHA
    dest = tmp_path / "m2"
    assert (
        "no such file"
        in refused("download", _fetch((tmp_path / "nope").as_uri(), dest, policy=FILES)).lower()
    )
    assert "not a regular file" in refused("download", _fetch(tmp_path.as_uri(), dest, policy=FILES))
    assert "must be local" in refused("download", _fetch("file://otherhost/etc/passwd", dest, policy=FILES))
    assert "more than the limit" in refused(
        "size", _fetch(DIGITS.as_uri(), dest, max_bytes=1000, policy=FILES)
    )
    message = refused("download", _fetch(DIGITS.as_uri(), dest))  # the default policy
    assert "scheme 'file' is not allowed" in message and "allow_file_urls" in message


def test_sha256(tmp_path: Path) -> None:
    verify_sha256(DIGITS, DIGITS_SHA)
    with pytest.raises(UpdateError) as exc:
        verify_sha256(DIGITS, "0" * 64)
    assert DIGITS_SHA in refused("sha256", exc)
    with pytest.raises(ChecksumError, match="not 64 hexadecimal"):
        verify_sha256(DIGITS, "abc")


# --- the request and chunked transfers ----------------------------------------------------------


def test_update_request() -> None:
    payload: dict[str, Any] = {
        "id": "u1",
        "pipeline": "digits",
        "url": "https://x/m",
        "sha256": DIGITS_SHA.upper(),
        "size": 100,
        "version": "2",
        "signature": "c2ln",
    }
    request = UpdateRequest.from_payload(payload)
    assert request.sha256 == DIGITS_SHA and request.transfer is None and request.signature == "c2ln"
    for change in (
        {"pipeline": "../etc"},
        {"sha256": "../../x"},
        {"size": -1},
        {"size": True},
        {"version": "1\n2"},
        {"url": None},
        {"transfer": "t1"},
        {"url": None, "transfer": "a/b"},
        {"id": None},
    ):
        with pytest.raises(UpdateError) as exc:
            UpdateRequest.from_payload({**payload, **change})
        refused("request", exc)
    chunked = UpdateRequest.from_payload({**payload, "url": None, "transfer": "t-1"})
    assert chunked.transfer == "t-1"


def test_chunks_out_of_order_with_duplicates(tmp_path: Path) -> None:
    assembler = ChunkAssembler(tmp_path / "chunks", max_bytes=10**6)
    size = 1000
    chunks = [DIGITS_BYTES[i : i + size] for i in range(0, len(DIGITS_BYTES), size)]
    order = list(range(len(chunks)))
    random.Random(1).shuffle(order)
    order[3:3] = order[:3]  # duplicates
    result = None
    for n, index in enumerate(order):
        if n == len(order) // 2:
            assembler = ChunkAssembler(tmp_path / "chunks", max_bytes=10**6)  # a restart
        got = assembler.add("t1", index, len(chunks), chunks[index])
        if got is not None:
            assert result is None
            result = got
    assert result is not None and result.read_bytes() == DIGITS_BYTES
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["t1.bin"]
    assert assembler.add("t1", 0, len(chunks), chunks[0]) is None  # late duplicate


def test_chunk_refusals_and_cleanup(tmp_path: Path) -> None:
    assembler = ChunkAssembler(tmp_path, max_bytes=100, max_chunks=10)
    for args in [("../x", 0, 2, b"a"), ("t", 2, 2, b"a"), ("t", 0, 11, b"a"), ("t", -1, 2, b"a")]:
        with pytest.raises(UpdateError) as exc:
            assembler.add(*args)
        refused("download", exc)
    assert assembler.add("t", 0, 3, b"a" * 60) is None
    with pytest.raises(UpdateError, match="received twice with different content"):
        assembler.add("t", 0, 3, b"b" * 60)
    with pytest.raises(UpdateError, match="earlier chunks said 3"):
        assembler.add("t", 1, 4, b"a")
    with pytest.raises(UpdateError) as exc:
        assembler.add("t", 1, 3, b"a" * 60)
    assert "transfer discarded" in refused("size", exc)
    assert not list(tmp_path.iterdir())
    assembler.add("old", 0, 2, b"x")
    assembler.add("new", 0, 2, b"x")
    old = time.time() - 3600
    os.utime(tmp_path / "old.chunks", (old, old))
    assert assembler.cleanup(older_than_s=600) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.chunks"]


# --- load, check, smoke -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Model:
    return Model(DIGITS, delegates=["cpu"])


def test_check_compatible_with_the_bundled_models(digits: Model) -> None:
    check_compatible(Model(DIGITS, delegates=["cpu"]), digits)
    with pytest.raises(UpdateError) as exc:
        check_compatible(Model(MODELS / "fused_int8.tflite"), digits)
    assert "2 inputs, the current model has 1" in refused("check", exc)
    assert "2 outputs, the current model has 1" in str(exc.value)
    with pytest.raises(UpdateError) as exc:
        check_compatible(Model(MODELS / "detect_int8.tflite"), digits)
    message = refused("check", exc)
    assert "input 0: shape differ" in message and "[1, 64, 64, 1]" in message and "[1, 8, 8, 1]" in message
    assert "output 0: shape differ" in message and "[1, 64, 15]" in message


class _Specs:
    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)


def test_check_compatible_quantization(digits: Model) -> None:
    spec = digits.inputs[0]
    assert spec.quant is not None
    rescaled = QuantParams((spec.quant.scale[0] * 2,), (0,), "int8")
    check_compatible(
        _Specs([TensorSpec(0, "renamed", 7, spec.shape, "int8", rescaled)], digits.outputs), digits
    )
    plain = _Specs([TensorSpec(0, "x", 0, spec.shape, "int8", None)], digits.outputs)
    with pytest.raises(UpdateError) as exc:
        check_compatible(plain, digits)
    assert "quantization differ" in refused("check", exc) and "not quantized" in str(exc.value)
    floats = _Specs([TensorSpec(0, "x", 0, spec.shape, "float32", None)], digits.outputs)
    with pytest.raises(UpdateError, match="dtype and quantization differ"):
        check_compatible(floats, digits)


def test_isolated_check_refuses_what_does_not_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model" * 10)
    with pytest.raises(UpdateError) as exc:
        isolated_check(junk)
    assert "junk.tflite" in refused("load", exc)
    isolated_check(DIGITS)  # a good model passes


def test_smoke_invoke(digits: Model) -> None:
    images = np.load(MODELS / "digits_heldout.npz")["images"][:1]
    spec = digits.inputs[0]
    assert spec.quant is not None
    real = quantize(images.reshape(spec.shape).astype(np.float64) / 255.0, spec.quant)
    (scores,) = smoke_invoke(digits, [real])
    assert scores.shape == (1, 10)
    smoke_invoke(digits, neutral_inputs(digits))
    with pytest.raises(UpdateError) as exc:
        smoke_invoke(digits, [np.zeros((1, 64, 64, 1), np.int8)])
    assert "expects int8 [1, 8, 8, 1]" in refused("smoke", exc)


class _NanModel:
    """No bundled model can output NaN (all are int8), so this stands in for a float one."""

    def __init__(self) -> None:
        self.inputs = (TensorSpec(0, "x", 0, (1, 2), "float32", None),)
        self.outputs = (TensorSpec(0, "scores", 1, (1, 2), "float32", None),)

    def invoke(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        return [np.array([[0.5, np.nan]], np.float32)]


def test_smoke_invoke_refuses_nan() -> None:
    with pytest.raises(UpdateError) as exc:
        smoke_invoke(_NanModel(), [np.zeros((1, 2), np.float32)])
    assert "'scores': 1 of 2 values are NaN" in refused("smoke", exc)


# --- the store ----------------------------------------------------------------------------------


def _blob(tmp_path: Path, n: int) -> tuple[Path, str]:
    data = DIGITS_BYTES + n.to_bytes(4, "big")
    path = tmp_path / f"blob{n}"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _stored(store: ModelStore, tmp_path: Path, n: int) -> str:
    path, sha = _blob(tmp_path, n)
    store.add("p", path, sha, f"v{n}", {"source": "test"})
    return sha


def test_store_probation_commit_and_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.startup("p") is None and store.current("p") is None
    a, b, c = (_stored(store, tmp_path, n) for n in range(3))
    first = store.activate("p", a, probation=False)
    assert first.sha256 == a and first.version == "v0" and first.path.read_bytes().startswith(DIGITS_BYTES)
    on_probation = store.activate("p", b, probation=True)
    assert on_probation.sha256 == b
    current = store.current("p")
    assert current is not None and current.sha256 == a  # the pointer waits for commit
    probation = store.probation("p")
    assert probation is not None and probation.sha256 == b
    assert {v["sha256"]: v["state"] for v in store.versions("p")} == {a: "current", b: "probation", c: "kept"}
    with pytest.raises(UpdateError) as exc:
        store.activate("p", c, probation=True)
    assert "on probation" in refused("store", exc)
    assert store.commit("p").sha256 == b
    assert store.probation("p") is None
    assert {v["sha256"]: v["state"] for v in store.versions("p")} == {b: "current", a: "previous", c: "kept"}
    store.activate("p", c, probation=True)
    serving = store.rollback("p", "probation: latency doubled")
    assert serving is not None and serving.sha256 == b
    back = store.rollback("p", "operator asked")
    assert back is not None and back.sha256 == a
    assert store.rollback("p", "operator asked again") is None  # back to the configured model
    with pytest.raises(UpdateError, match="serves its configured model") as exc:
        store.rollback("p", "again")
    refused("store", exc)
    actions = [(h["action"], h["sha256"], h["reason"]) for h in store.history("p", 100)]
    assert ("rolled back", c, "probation: latency doubled") in actions
    assert ("rolled back", b, "operator asked") in actions
    assert actions[-1] == ("rolled back", a, "operator asked again")
    assert [a for a, *_ in actions[:5]] == ["added", "added", "added", "activated", "probation"]
    with pytest.raises(StoreError, match="not in the store"):
        store.activate("p", "0" * 64, probation=True)
    store.activate("p", a, probation=False)
    with pytest.raises(StoreError, match="already the current model"):
        store.activate("p", a, probation=True)
    with pytest.raises(StoreError, match="nothing to commit"):
        store.commit("p")
    with pytest.raises(StoreError, match="not valid"):
        store.current("../etc")


def test_store_startup_during_probation(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a, b = _stored(store, tmp_path, 0), _stored(store, tmp_path, 1)
    store.activate("p", a, probation=False)
    store.activate("p", b, probation=True)
    restarted = ModelStore(tmp_path)
    entry = restarted.startup("p")
    assert entry is not None and entry.sha256 == a and restarted.probation("p") is None
    last = restarted.history("p", 1)[0]
    assert (last["action"], last["sha256"], last["reason"]) == (
        "rolled back",
        b,
        "rolled back: restart during probation",
    )
    # never updated before: back to the configured model
    fresh = ModelStore(tmp_path / "fresh")
    sha = _stored(fresh, tmp_path, 2)
    fresh.activate("p", sha, probation=True)
    assert ModelStore(tmp_path / "fresh").startup("p") is None


def test_store_startup_completes_a_commit_cut_short(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a, b = _stored(store, tmp_path, 0), _stored(store, tmp_path, 1)
    store.activate("p", a, probation=False)
    store.activate("p", b, probation=True)
    probation = (tmp_path / "p" / "probation.json").read_bytes()
    store.commit("p")
    (tmp_path / "p" / "probation.json").write_bytes(probation)  # killed before its removal
    entry = ModelStore(tmp_path).startup("p")
    assert entry is not None and entry.sha256 == b
    assert store.history("p", 1)[0]["reason"] == "completed at restart"


def test_store_pruning_keeps_current_and_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=3)
    shas = []
    for n in range(6):
        shas.append(_stored(store, tmp_path, n))
        store.activate("p", shas[-1], probation=True)
        store.commit("p")
    states = {v["sha256"]: v["state"] for v in store.versions("p")}
    assert states == {shas[5]: "current", shas[4]: "previous", shas[3]: "kept"}
    assert {p.name for p in (tmp_path / "p").glob("*.tflite")} == {f"{s}.tflite" for s in shas[3:]}
    store.rollback("p", "bad")
    store.rollback("p", "bad too")
    current, previous = store.current("p"), store.previous("p")
    assert current is not None and current.sha256 == shas[3] and previous is None
    small = ModelStore(tmp_path, keep=1)
    again = _stored(small, tmp_path, 0)
    small.activate("p", again, probation=False)
    states = {v["sha256"]: v["state"] for v in small.versions("p")}
    assert states == {again: "current", shas[3]: "previous"}  # keep=1 still keeps the previous
    assert not list((tmp_path / "p").glob(".*"))


def test_store_keeps_a_reference_with_its_model_and_prunes_it_with_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=1)
    refs = [{"v": 1, "kind": "top1", "n": n} for n in range(3)]
    shas = []
    for n in range(3):
        path, sha = _blob(tmp_path, n)
        store.add("p", path, sha, f"v{n}", reference=refs[n] if n != 1 else None)
        shas.append(sha)
        assert store.reference("p", sha) == (refs[n] if n != 1 else None)
        store.activate("p", sha, probation=False)
    listed = {v["sha256"]: v["reference_sha256"] for v in store.versions("p")}
    assert listed == {shas[2]: reference_digest(refs[2]), shas[1]: None}  # v0 pruned (keep=1 + previous)
    assert not (tmp_path / "p" / f"{shas[0]}.reference.json").exists()
    orphan = tmp_path / "p" / f"{'e' * 64}.reference.json"
    orphan.write_text("{}")
    assert orphan in store.cleanup("p")
    (tmp_path / "p" / f"{shas[2]}.reference.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable drift reference"):
        store.reference("p", shas[2])


def test_store_files_modes_and_checksum(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    path, sha = _blob(tmp_path, 0)
    with pytest.raises(UpdateError) as exc:
        store.add("p", path, "0" * 64, "v0")
    refused("sha256", exc)
    target = store.add("p", path, sha, "v0")
    assert store.add("p", path, sha, "v0") == target  # idempotent
    staged = store.staging_dir("p") / "download"
    staged.write_bytes(path.read_bytes())
    store.add("p", staged, sha, "v0", move=True)
    assert not staged.exists()
    store.activate("p", sha, probation=True)
    store.commit("p")
    for p in (tmp_path / "models").rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {mode:o}"
    assert stat.S_IMODE((tmp_path / "models").stat().st_mode) == 0o700


def test_store_corrupt_pointers_fall_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ModelStore(tmp_path)
    a, b = _stored(store, tmp_path, 0), _stored(store, tmp_path, 1)
    store.activate("p", a, probation=False)
    store.activate("p", b, probation=False)
    pointer = tmp_path / "p" / "current.json"
    pointer.write_bytes(pointer.read_bytes()[:20])  # half-written
    with caplog.at_level(logging.ERROR):
        current = store.current("p")
    assert current is not None and current.sha256 == a and "unreadable" in caplog.text
    (tmp_path / "p" / "current.json.bak").write_text('{"current": 3}')
    assert store.current("p") is None
    # a committed model whose file was damaged: startup falls back to the previous one
    store.activate("p", a, probation=False)
    store.activate("p", b, probation=False)
    store.model_path("p", b).write_bytes(b"bit rot")
    entry = store.startup("p")
    assert entry is not None and entry.sha256 == a
    assert "model file corrupt" in store.history("p", 1)[0]["reason"]


def test_store_history_is_bounded_and_survives_a_torn_line(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, history_lines=20)
    for n in range(30):
        store.record("p", "refused", DIGITS_SHA, str(n), "step sha256: mismatch", step="sha256")
    history = store.history("p", 100)
    assert len(history) == 20 and history[-1]["version"] == "29" and history[-1]["step"] == "sha256"
    with open(tmp_path / "p" / "history.jsonl", "ab") as f:
        f.write(b'{"time": 1, "act')  # a crash in the middle of a line
    store.record("p", "refused", None, "30")
    assert [h["version"] for h in store.history("p", 2)] == ["29", "30"]  # the torn line is skipped
    assert len((tmp_path / "p" / "history.jsonl").read_bytes().splitlines()) <= 22


def test_store_cleanup(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    sha = _stored(store, tmp_path, 0)
    directory = tmp_path / "p"
    (directory / f".current.json.tmp-{os.getpid()}").write_text("{")
    (directory / f".{sha}.tflite.tmp-123").write_bytes(b"half")
    (directory / ("1" * 64 + ".json")).write_text("{}")  # metadata of a model never renamed in
    (store.staging_dir("p") / "u1.download.part").write_bytes(b"half")
    removed = store.cleanup()
    assert len(removed) == 4
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [f"{sha}.tflite", f"{sha}.json", "history.jsonl", "staging"]
    )


# --- kill -9 at random moments ------------------------------------------------------------------

CHILD = """
import random, sys
from pathlib import Path
from edge_runtime.updates.store import ModelStore
from edge_runtime.updates.transfer import DownloadPolicy, download
from edge_runtime.updates.protocol import StoreError
FILES = DownloadPolicy(allow_file=True)

root, sources, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
store = ModelStore(root, keep=3)
shas = sorted(p.stem for p in sources.glob("*.bin"))
print("ready", flush=True)
while True:
    try:
        current, probation = store.current("p"), store.probation("p")
        choice = rng.random()
        if probation is not None:
            if choice < 0.6:
                store.commit("p")
            else:
                store.rollback("p", "probation failed")
        elif choice < 0.3:
            sha = rng.choice(shas)
            dest = store.staging_dir("p") / (sha + ".download")
            download((sources / (sha + ".bin")).as_uri(), dest, max_bytes=10**7, timeout_s=10, policy=FILES)
            store.add("p", dest, sha, "v-" + sha[:8], move=True)
        elif choice < 0.85:
            serving = current.sha256 if current else None
            others = [v["sha256"] for v in store.versions("p") if v["sha256"] != serving]
            if others:
                store.activate("p", rng.choice(others), probation=rng.random() < 0.8)
        elif current is not None:
            store.rollback("p", "operator")
    except StoreError:
        pass
"""


def test_kill_9_at_random_moments_leaves_a_consistent_store(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    sources = tmp_path / "sources"
    sources.mkdir()
    for n in range(6):
        data = rng.randbytes(200_000 + 50_000 * n)
        (sources / f"{hashlib.sha256(data).hexdigest()}.bin").write_bytes(data)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "models"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    served: set[str | None] = set()
    for round_ in range(20):
        child = subprocess.Popen(
            [sys.executable, str(script), str(root), str(sources), str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n", child.stderr.read() if child.stderr else ""
        time.sleep(rng.uniform(0.0, 0.25))
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
        directory = root / "p"
        if not directory.exists():
            continue
        # every file reads back whole: pointers parse, models match their names
        pointer: dict[str, Any] = {"current": None, "previous": []}
        if (directory / "current.json").exists():
            pointer = json.loads((directory / "current.json").read_bytes())
        for name in ("current.json.bak", "probation.json"):
            if (directory / name).exists():
                json.loads((directory / name).read_bytes())
        for model in directory.glob("*.tflite"):
            assert sha256_file(model) == model.stem, f"round {round_}: {model.name} half-written"
        for entry in [pointer["current"], *pointer["previous"]]:
            if entry:
                assert (directory / f"{entry['sha256']}.tflite").is_file(), f"round {round_}: {entry}"
        store = ModelStore(root, keep=3)
        serving = store.startup("p")
        expected = pointer["current"]["sha256"] if pointer["current"] else None
        assert (serving.sha256 if serving else None) == expected, f"round {round_}"
        if serving:
            assert sha256_file(serving.path) == serving.sha256
        served.add(expected)
        assert store.probation("p") is None and not (directory / "probation.json").exists()
        assert not list(directory.glob(".*")), f"round {round_}: temporary files left"
        assert not list((directory / "staging").glob("*")) if (directory / "staging").exists() else True
        assert all(isinstance(h, dict) for h in store.history("p", 1000))
    assert len(served) >= 2, "the children never got far enough to change the committed model"
