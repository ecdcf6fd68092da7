"""Attacks on model updates (issue 11, part 3): each class reproduced exactly, then varied.

Two halves. The first drives the :class:`Updater` and :class:`Probation` directly against a fake
host that implements :class:`~edge_runtime.updates.host.UpdateHost` (no daemon, real models, real
HTTP server on loopback). The second attacks a real daemon through a real mosquitto broker and
checks, after every attack, both the refusal (reply and event) and that the daemon still produces
results and answers commands.

The classes: reading local files or other schemes through ``model.update`` and learning about
their content before authentication; slow downloads that outlive their deadline and block other
updates; replays of older signed models and unsigned/forged rollbacks; chunk floods that fill the
disk; probation that commits a model the device does not serve, or with no results.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import DATA, MODELS
from devkit.processes import wait_until
from edge_runtime.config import Config, load_config
from edge_runtime.errors import PipelineError
from edge_runtime.fleet.artifact import describe_model
from edge_runtime.fleet.cli import main as fleet_main
from edge_runtime.reporting.commands import Command, CommandError
from edge_runtime.runtime.model import Model
from edge_runtime.updates.host import Watcher
from edge_runtime.updates.probation import Probation
from edge_runtime.updates.protocol import UpdateError, VersionError
from edge_runtime.updates.signing import SignedFields, generate_keypair, sign, verify, write_private_key
from edge_runtime.updates.store import ModelStore
from edge_runtime.updates.transfer import ChunkAssembler, DownloadPolicy, download
from edge_runtime.updates.updater import Updater
from edge_runtime.updates.versions import Floors, is_newer, version_key

DIGITS = MODELS / "digits_int8.tflite"
V2 = DATA / "digits_v2_int8.tflite"  # the same network with another description: another sha256
CONSTANT = DATA / "constant_digits_int8.tflite"
ZERO_SIGNATURE = base64.b64encode(bytes(64)).decode()  # well formed, matches no key
SECRET = Path("/etc/shadow") if os.access("/etc/shadow", os.R_OK) else Path("/etc/passwd")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def v3_bytes() -> bytes:
    """Digits with trailing padding: a third valid model with its own sha256."""
    return DIGITS.read_bytes() + b"\0" * 16 + b"attack-tests-v3"


# =============================================================================== a real HTTP server


class Files(http.server.ThreadingHTTPServer):
    """Serves ``files`` by name; ``/drip/NAME`` sends one byte every ``drip_s``; a name in
    ``redirects`` answers 302 to its target; counts every request."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes], redirects: dict[str, str], drip_s: float = 0.5) -> None:
        self.files = files
        self.redirects = redirects
        self.drip_s = drip_s
        self.hits: list[str] = []
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Files

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        name = self.path.lstrip("/")
        try:
            if name in self.server.redirects:
                self.send_response(302)
                self.send_header("Location", self.server.redirects[name])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif name == "drip-headers":  # the status line itself, one byte at a time
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n":
                    if self.server.stop.wait(self.server.drip_s):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            elif name.startswith("drip/") and name[5:] in self.server.files:
                data = self.server.files[name[5:]]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for byte in data:  # one byte at a time, forever slower than the deadline
                    if self.server.stop.wait(self.server.drip_s):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            elif name in self.server.files:
                data = self.server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def http_files(
    files: dict[str, bytes], redirects: dict[str, str] | None = None, drip_s: float = 0.5
) -> Iterator[Files]:
    server = Files(files, redirects or {}, drip_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


# ============================================================================ the fake host (no daemon)


class FakeRunner:
    def __init__(self, model: Model, version: str) -> None:
        self.model = model
        self.version = version

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.model.name, "sha256": self.model.sha256, "version": self.version}

    def capture_inputs(self, timeout: float) -> list[npt.NDArray[Any]] | None:
        return None


class FakePipeline:
    """A pipeline that invokes its serving model on random int8 inputs every ``period_s`` and
    reports each result to the watcher, like :class:`edge_runtime.pipeline.Pipeline`."""

    def __init__(self, name: str, path: Path, version: str, period_s: float = 0.01) -> None:
        self.name = name
        self.errors = 0
        self.last_error = ""
        self.results = 0
        self.paused = False
        self.runner = FakeRunner(Model(path, delegates=["cpu"]), version)
        self._watcher: Watcher | None = None
        self._watched: FakeRunner | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._period = period_s
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.wait(self._period):
            if self.paused:
                continue
            runner = self.runner
            spec = runner.model.inputs[0]
            info = np.iinfo(spec.dtype)
            array = rng.integers(info.min, info.max, spec.shape, dtype=spec.dtype, endpoint=True)
            started = time.perf_counter()
            outputs = runner.model.invoke([array])
            self.results += 1
            watcher = self._watcher
            if watcher is not None and runner is self._watched:
                watcher.observe(outputs, (time.perf_counter() - started) * 1000)

    def serving(self) -> FakeRunner:
        return self.runner

    def load_candidate(self, path: Path, version: str) -> Model:
        return Model(path, delegates=["cpu"])

    def runner_for(self, path: Path, version: str, model: Model | None = None) -> FakeRunner:
        return FakeRunner(model or Model(path, delegates=["cpu"]), version)

    def swap_model(self, runner: FakeRunner) -> FakeRunner:
        old, self.runner = self.runner, runner
        return old

    def invoke_p95(self) -> float | None:
        return None

    def begin_watch(self, runner: FakeRunner, watcher: Watcher) -> FakeRunner:
        with self._lock:
            if self.paused or self._stop.is_set():
                raise PipelineError(f"pipeline {self.name} is {'paused' if self.paused else 'stopping'}")
            self._watcher, self._watched = watcher, runner
            return self.swap_model(runner)

    def end_watch(self, reason: str, watcher: Watcher | None = None) -> None:
        with self._lock:
            current = self._watcher
            if current is None or (watcher is not None and current is not watcher):
                return
            self._watcher = self._watched = None
        if watcher is None:
            current.end(reason)

    def pause(self) -> None:
        self.paused = True
        self.end_watch(f"pipeline {self.name} was paused")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class FakeHost:
    """The daemon as the updater sees it: a config, pipelines, events and replies in lists."""

    def __init__(self, config: Config, pipelines: list[FakePipeline]) -> None:
        self.config = config
        self.stopping = False
        self.pipelines = {p.name: p for p in pipelines}
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self._cond = threading.Condition()

    def pipeline(self, name: str) -> FakePipeline:
        if name not in self.pipelines:
            raise CommandError(f"no pipeline {name!r}")
        return self.pipelines[name]

    def event(self, kind: str, message: str, fields: dict[str, Any]) -> None:
        with self._cond:
            self.events.append((kind, message, fields))

    def reply(self, command: Command, body: dict[str, Any]) -> None:
        with self._cond:
            self.replies.setdefault(command.id, []).append(body)
            self._cond.notify_all()

    def final(self, request_id: str, timeout: float = 60) -> list[dict[str, Any]]:
        def done() -> bool:
            return any(r.get("final") or not r.get("ok") for r in self.replies.get(request_id, []))

        with self._cond:
            assert self._cond.wait_for(done, timeout), self.replies.get(request_id)
            return list(self.replies[request_id])

    def kinds(self) -> list[str]:
        with self._cond:
            return [kind for kind, _, _ in self.events]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., tuple[Updater, FakeHost, FakePipeline]]]:
    made: list[tuple[FakeHost, FakePipeline]] = []

    def make(updates: str = "", version: str = "1") -> tuple[Updater, FakeHost, FakePipeline]:
        extra = "[updates]\nallow_file_urls = true\nfail_on_constant = false\n" + updates
        config = load_config(digits_config(tmp_path, port=None, extra=extra))
        pipe = FakePipeline("digits", DIGITS, version)
        host = FakeHost(config, [pipe])
        made.append((host, pipe))
        return Updater(host), host, pipe

    yield make
    for host, pipe in made:
        host.stopping = True
        pipe.close()


def update_cmd(
    request_id: str, path: Path | None, data: bytes, version: str, key: bytes | None = None, **over: Any
) -> Command:
    args: dict[str, Any] = {
        "pipeline": "digits",
        "url": path.as_uri() if path is not None else "",
        "sha256": sha(data),
        "size": len(data),
        "version": version,
    }
    args.update(over)
    if key is not None:
        fields = SignedFields.update(
            "digits", version, args["sha256"], args["size"], args.get("rollback_from")
        )
        args["signature"] = sign(key, fields)
    return Command("model.update", request_id, args)


# --- versions and the floor ------------------------------------------------------------------------


def test_version_order_is_defined_and_unorderable_versions_are_refused(tmp_path: Path) -> None:
    ordered = ["0.9", "1", "1.0.1", "1.2-alpha", "1.2-alpha.1", "1.2-alpha.beta", "1.2-rc.2", "1.2-rc.10",
               "1.2", "v1.10", "2", "2024.11.5", "2024.11.5.1"]  # fmt: skip
    keys = [version_key(v) for v in ordered]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert version_key("1.2") == version_key("1.2.0") == version_key("v1.2.0.0")
    assert not is_newer("1.2.0", "1.2") and is_newer("1.2", "1.2-rc.9")
    for bad in (
        "latest",
        "",
        "1..2",
        "1.2.3.4.5",
        "2024-11-05T10:00",
        "1.2-",
        "-1",
        "1.2+build",
        " 1",
        "1\n",
    ):
        with pytest.raises(VersionError, match="cannot be ordered"):
            version_key(bad)
    floors = Floors(tmp_path)
    assert floors.get("p") is None
    assert floors.raise_to("p", "2", "a" * 64) and not floors.raise_to("p", "1.9", "b" * 64)
    assert not floors.raise_to("p", "2.0", "c" * 64) and floors.get("p") == "2"
    assert Floors(tmp_path).get("p") == "2"  # durable: read back by a new instance
    (tmp_path / "p" / "floor.json").write_text("{torn")
    with pytest.raises(UpdateError, match="unreadable anti-rollback floor"):  # fails closed
        Floors(tmp_path).get("p")


# --- the updater against the fake host --------------------------------------------------------------


def test_updater_checks_the_signature_and_the_floor_before_any_download(
    fake: Callable[..., tuple[Updater, FakeHost, FakePipeline]],
) -> None:
    private, public = generate_keypair()
    other, _ = generate_keypair()
    updater, host, _ = fake(f'public_keys = ["{public}"]\nprobation_results = 5\n')
    data = V2.read_bytes()
    with http_files({"m": data}) as server:
        url = f"{server.base}/m"
        resized = update_cmd("size", None, data, "2", private, url=url)
        resized.args["size"] += 1  # the signature covers the size
        v1 = update_cmd(
            "v1", None, data, "2", url=url, signature=sign(private, SignedFields.rollback("digits", "2", "1"))
        )
        forged = [
            update_cmd("unsigned", None, data, "2", url=url),
            update_cmd("other-key", None, data, "2", other, url=url),
            resized,
            v1,  # a rollback's signature on an update
        ]
        for cmd in forged:
            updater.update(cmd)
            (reply,) = host.final(cmd.id)  # one reply, at once
            assert reply["ok"] is False and reply["step"] == "signature", reply
        assert server.hits == [], "a request was fetched before its signature was checked"
        assert host.kinds().count("model.refused") == len(forged)
        updater.update(update_cmd("good", None, data, "2", private, url=url))
        replies = host.final("good")
        assert replies[-1]["ok"] and replies[-1]["step"] == "commit", replies
        assert [r["step"] for r in replies][:3] == ["accepted", "signature", "download"]
        assert server.hits == ["/m"]
        # the same signed request again, while it serves that model: a no-op ("already")
        updater.update(update_cmd("again", None, data, "2", private, url=url))
        assert host.final("again")[-1] == {**host.final("again")[-1], "step": "commit", "already": True}
        # the same version with other bytes: the floor is 2 now
        other_bytes = v3_bytes()
        updater.update(update_cmd("replay", None, other_bytes, "2", private, url=url))
        (reply,) = host.final("replay")
        assert reply["step"] == "version" and "not above '2'" in reply["error"], reply
        assert server.hits == ["/m", "/m"]
    assert updater.floors.get("digits") == "2"


def test_probation_passes_only_after_real_results_and_a_pause_rolls_back(
    fake: Callable[..., tuple[Updater, FakeHost, FakePipeline]],
) -> None:
    updater, host, pipe = fake("probation_results = 30\nprobation_s = 30\n")
    original = pipe.runner.model.sha256
    data = V2.read_bytes()
    updater.update(update_cmd("u1", V2, data, "2"))
    assert wait_until(lambda: any(r["step"] == "swap" for r in host.replies.get("u1", [])), 60)
    pipe.pause()  # the example: a paused pipeline passed probation with 0 results
    (*_, final) = host.final("u1")
    assert final["ok"] is False and final["step"] == "probation" and final["rolled_back"] is True
    assert final["interrupted"] is True and "paused" in final["error"], final
    assert pipe.runner.model.sha256 == original
    assert updater.store.current("digits") is None and updater.store.probation("digits") is None
    assert updater.floors.get("digits") is None
    assert "model.rolled_back" in host.kinds()
    # paused before the update: nothing is swapped in
    updater.update(update_cmd("u2", V2, data, "2"))
    (*_, final) = host.final("u2")
    assert final["step"] == "swap" and "is paused" in final["error"], final
    assert pipe.runner.model.sha256 == original
    # resumed: it commits after 30 real results of the candidate, not before
    pipe.paused = False
    updater.update(update_cmd("u3", V2, data, "2"))
    replies = host.final("u3")
    assert replies[-1]["step"] == "commit", replies
    assert next(r for r in replies if r["step"] == "probation")["results"] >= 30
    assert pipe.runner.model.sha256 == sha(data)


def test_a_store_from_before_floors_gets_its_committed_version_as_floor(
    fake: Callable[..., tuple[Updater, FakeHost, FakePipeline]], tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "state-dev1" / "models")
    store.add("digits", V2, sha(V2.read_bytes()), "5")
    store.activate("digits", sha(V2.read_bytes()), probation=False)
    assert not (store.root / "digits" / "floor.json").exists()
    updater, host, _ = fake()
    assert updater.floors.get("digits") == "5"
    updater.update(update_cmd("old", DIGITS, DIGITS.read_bytes(), "4"))
    (reply,) = host.final("old")
    assert reply["step"] == "version" and "not above '5'" in reply["error"], reply


def test_probation_with_no_results_fails_at_its_deadline() -> None:
    model = Model(DIGITS, delegates=["cpu"])

    class Quiet:
        errors = 0
        last_error = ""

    watch = Probation(Quiet(), None, model.outputs)
    assert watch.verdict(3.0, False) == ""  # nothing wrong yet: the updater needs the count too
    assert watch.count == 0
    outputs = model.invoke([np.zeros(model.inputs[0].shape, model.inputs[0].dtype)])
    for _ in range(3):
        watch.observe(outputs, 1.0)
    assert watch.count == 3
    watch.end("pipeline digits was reloaded")
    watch.observe(outputs, 1.0)  # a result after the end does not count
    assert watch.count == 3 and watch.ended == "pipeline digits was reloaded"
    assert watch.commit(lambda: "committed") is None  # the end wins: no commit
    other = Probation(Quiet(), None, model.outputs)
    assert other.commit(lambda: "committed") == "committed"
    other.end("too late")
    assert other.ended == ""  # a commit that happened stays


def test_updater_probation_deadline_without_enough_results(
    fake: Callable[..., tuple[Updater, FakeHost, FakePipeline]],
) -> None:
    updater, host, _ = fake("probation_results = 100000\nprobation_s = 1\n")
    updater.update(update_cmd("slow", V2, V2.read_bytes(), "2"))
    final = host.final("slow")[-1]
    assert final["step"] == "probation" and final["rolled_back"] and final["interrupted"] is False
    assert "of the 100000 results required" in final["error"], final
    assert updater.store.current("digits") is None


def test_rollback_against_the_fake_host(
    fake: Callable[..., tuple[Updater, FakeHost, FakePipeline]], tmp_path: Path
) -> None:
    private, public = generate_keypair()
    updater, host, pipe = fake(f'public_keys = ["{public}"]\nprobation_results = 3\n')
    v3 = v3_bytes()
    v3_path = tmp_path / "v3.tflite"
    v3_path.write_bytes(v3)
    for version, path, data in (("2", V2, V2.read_bytes()), ("3", v3_path, v3)):
        updater.update(update_cmd(f"u{version}", path, data, version, private))
        assert host.final(f"u{version}")[-1]["step"] == "commit"

    def rollback(request_id: str, **args: Any) -> dict[str, Any]:
        return updater.rollback(Command("model.rollback", request_id, {"pipeline": "digits", **args}))

    def signed(to: str, start: str) -> dict[str, str]:
        fields = SignedFields.rollback("digits", to, start)
        return {"version": to, "rollback_from": start, "signature": sign(private, fields)}

    for request_id, args, error in [
        ("unsigned", {}, "must name 'version' and 'rollback_from' and be signed"),
        ("bad-sig", {**signed("2", "3"), "signature": ZERO_SIGNATURE}, "matches none"),
        ("other-key", {**signed("2", "3"), "signature": signed("2", "4")["signature"]}, "matches none"),
        ("not-local", signed("1", "3"), "local history"),
        ("wrong-from", signed("2", "2"), "runs now ('3')"),
    ]:
        with pytest.raises(CommandError, match=error.replace("(", r"\(").replace(")", r"\)")):
            rollback(request_id, **args)
    assert pipe.runner.model.sha256 == sha(v3)
    good = signed("2", "3")
    assert rollback("ok", **good)["version"] == "2"
    assert pipe.runner.model.sha256 == sha(V2.read_bytes())
    with pytest.raises(CommandError, match="works once"):  # the same signed rollback, replayed
        rollback("replay", **good)
    assert updater.floors.get("digits") == "3"  # a rollback does not lower the floor
    assert host.kinds().count("model.refused") == 6


def test_the_fleet_tool_signs_the_v2_fields_and_a_downgrade_permission(tmp_path: Path) -> None:
    private, public = generate_keypair()

    plain = describe_model(V2, "digits", "2", private)
    fields = SignedFields.update("digits", "2", plain.sha256, plain.size)
    assert verify([public], fields, plain.signature) and "rollback_from" not in plain.manifest()
    down = describe_model(V2, "digits", "2", private, rollback_from="3")
    assert down.manifest()["rollback_from"] == "3"
    assert verify([public], SignedFields.update("digits", "2", down.sha256, down.size, "3"), down.signature)
    with pytest.raises(UpdateError, match="matches none"):  # the permission is part of what is signed
        verify([public], fields, down.signature)


def test_download_policy_redirects_and_deadline(tmp_path: Path) -> None:
    data = V2.read_bytes()
    with http_files({"m": data}) as server:
        port = server.server_address[1]
        server.redirects.update(
            {"other": f"http://localhost:{port}/m", "loop": "/loop", "file": "file:///etc/passwd"}
        )
        dest = tmp_path / "m"
        for name, words in (
            ("other", "to another host"),
            ("loop", "more than 5 redirects"),
            ("file", "scheme"),
        ):
            with pytest.raises(UpdateError, match=words):
                download(f"{server.base}/{name}", dest, max_bytes=10**6, timeout_s=5)
            assert not dest.exists()
        allowed = DownloadPolicy(redirect_hosts=("localhost",))
        download(f"{server.base}/other", dest, max_bytes=10**6, timeout_s=5, policy=allowed)
        assert dest.read_bytes() == data
        for path in ("drip/m", "drip-headers"):
            started = time.monotonic()
            with pytest.raises(UpdateError, match=r"not complete within 1\.5 s"):
                download(f"{server.base}/{path}", tmp_path / "slow", max_bytes=10**6, timeout_s=1.5)
            assert time.monotonic() - started < 1.5 + 1.5, f"{path}: the deadline is for the whole download"
        assert not (tmp_path / "slow").exists() and not (tmp_path / "slow.part").exists()


# --- chunked transfers ----------------------------------------------------------------------------------


def test_chunk_quota_transfer_bound_and_expiry_while_running(tmp_path: Path) -> None:
    chunks = ChunkAssembler(tmp_path, max_bytes=10_000, quota_bytes=25_000, max_transfers=3, expiry_s=1.0)
    for n in range(3):
        assert chunks.add(f"t{n}", 0, 4, b"x" * 6_000) is None
    with pytest.raises(UpdateError, match="3 transfers are already in progress"):
        chunks.add("t3", 0, 2, b"x")
    with pytest.raises(UpdateError, match="the quota"):
        chunks.add("t0", 1, 4, b"x" * 8_000)  # 18000 + 8000 > 25000
    assert chunks.used_bytes == 18_000
    old = time.time() - 5
    os.utime(tmp_path / "t0.chunks", (old, old))
    assert chunks.add("t4", 0, 2, b"y" * 100) is None  # t0 expired at this chunk: a slot is free
    assert chunks.transfers() == ["t1", "t2", "t4"]
    time.sleep(1.2)
    assert chunks.sweep() == ["t1", "t2", "t4"]  # the updater's sweeper calls this while running
    assert list(tmp_path.iterdir()) == [] and chunks.used_bytes == 0


# ====================================================================== a real daemon, a real broker


def daemon_config(tmp_path: Path, broker: Mosquitto, updates: str, more: str = "") -> Path:
    """The digits config with ``[updates]`` set to ``updates`` and ``more`` TOML after it."""
    return digits_config(tmp_path, port=broker.port, extra=f"[updates]\n{updates}\n{more}")


def send(sub: Subscriber, name: str, body: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
    """Publish a command; every reply up to the final one (or the first refusal)."""
    sub.publish(f"edge/dev1/cmd/{name}", json.dumps(body).encode(), qos=1)
    return collect(sub, body["id"], timeout, long=name == "model.update")


def collect(sub: Subscriber, request_id: str, timeout: float = 60, long: bool = True) -> list[dict[str, Any]]:
    """The replies to ``request_id`` up to the final one (``long``) or the first."""
    topic = f"edge/dev1/reply/{request_id}"
    assert sub.wait_for(
        lambda ms: any(
            m.topic == topic and (m.json().get("final") or not m.json().get("ok") or not long) for m in ms
        ),
        timeout,
    ), sub.json(topic)
    return sub.json(topic)


def events(sub: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [e for e in sub.json("edge/dev1/events") if e.get("kind") == kind]


def serving(sub: Subscriber, pipeline: str = "digits") -> str:
    healths = sub.json("edge/dev1/health")
    sha256: str = healths[-1]["pipelines"][pipeline]["models"][0]["sha256"]
    return sha256


def fresh_serving(sub: Subscriber, pipeline: str = "digits") -> str:
    """The sha256 the next health report (after now) says the pipeline serves."""
    count = len(sub.messages("edge/dev1/health"))
    assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == "edge/dev1/health"]) > count, 20)
    return serving(sub, pipeline)


def still_alive(sub: Subscriber, daemon: Daemon, tag: str) -> None:
    """The daemon produces results and answers a command."""
    count = daemon.count()
    assert wait_until(lambda: daemon.count() > count + 5, 30), (
        f"{tag}: results stopped\n{daemon.log()[-3000:]}"
    )
    (pong,) = send(sub, "ping", {"id": f"ping-{tag}"})
    assert pong["ok"] and pong["pong"] is True, pong
    assert daemon.proc.poll() is None


def update_body(
    request_id: str, url: str, data: bytes, version: str, key: bytes | None = None, **over: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "pipeline": "digits",
        "url": url,
        "sha256": sha(data),
        "size": len(data),
        "version": version,
    }
    body.update(over)
    if key is not None:
        fields = SignedFields.update(
            body["pipeline"], version, body["sha256"], body["size"], body.get("rollback_from")
        )
        body["signature"] = sign(key, fields)
    return body


@pytest.fixture
def online() -> Callable[[Subscriber, Daemon], None]:
    def wait(sub: Subscriber, daemon: Daemon) -> None:
        assert sub.wait_for(lambda ms: any(m.topic == "edge/dev1/health" for m in ms), 40), daemon.log()[
            -3000:
        ]

    return wait


def test_local_files_and_other_schemes_are_never_read(
    tmp_path: Path, broker: Mosquitto, online: Callable[[Subscriber, Daemon], None]
) -> None:
    """The issue's example: ``file:///etc/shadow`` answered with the file's size, and with the
    right size its sha256. Now the scheme is refused before the file is opened, whatever the size
    claimed, so the replies for a right and a wrong guess are the same."""
    secret = SECRET.read_bytes()
    model = V2.read_bytes()
    config = daemon_config(tmp_path, broker, "probation_results = 5\n")
    with http_files({"m": model}, {}) as server:
        base = server.base
        port = server.server_address[1]
        server.redirects.update(
            {
                "to-file": SECRET.as_uri(),
                "to-other-host": f"http://localhost:{port}/m",  # same server, another host name
                "to-ftp": f"ftp://127.0.0.1:{port}/m",
                "to-same": "/m",
            }
        )
        attacks = [
            ("right-size", SECRET.as_uri(), secret, "is not allowed"),
            ("wrong-size", SECRET.as_uri(), secret + b"x", "is not allowed"),
            ("upper", "FILE://" + str(SECRET), secret, "is not allowed"),
            ("mixed", "FiLe:" + str(SECRET), secret, "is not allowed"),
            ("localhost", f"file://localhost{SECRET}", secret, "is not allowed"),
            ("ftp", f"ftp://127.0.0.1:{port}/m", model, "is not allowed"),
            ("gopher", f"gopher://127.0.0.1:{port}/_GET%20/m", model, "is not allowed"),
            ("data", "data:application/octet-stream;base64," + base64.b64encode(model[:100]).decode(), model,
             "is not allowed"),
            ("jar", f"jar:file://{SECRET}!/", secret, "is not allowed"),
            ("no-host", "http:///m", model, "no host"),
            ("redirect-file", f"{base}/to-file", secret, "refusing redirect (302) to another scheme"),
            ("redirect-host", f"{base}/to-other-host", model, "refusing redirect (302) to another host"),
            ("redirect-ftp", f"{base}/to-ftp", model, "refusing redirect (302) to another scheme"),
        ]  # fmt: skip
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            online(sub, daemon)
            before = serving(sub)
            finals = {}
            for name, url, data, error in attacks:
                replies = send(sub, "model.update", update_body(name, url, data, "2"))
                final = replies[-1]
                assert final["ok"] is False and final["step"] == "download", (name, replies)
                assert error in final["error"], (name, final)
                assert [r["step"] for r in replies] == ["accepted", "signature", "download"], (name, replies)
                assert sha(secret) not in json.dumps(replies)
                finals[name] = final
            strip = {"id", "error"}
            assert {k: v for k, v in finals["right-size"].items() if k not in strip} == {
                k: v for k, v in finals["wrong-size"].items() if k not in strip
            }
            assert finals["right-size"]["error"] == finals["wrong-size"]["error"]
            assert sub.wait_for(lambda ms: len(events(sub, "model.refused")) == len(attacks), 20)
            assert server.hits.count("/m") == 0, server.hits  # no redirect was followed to another host
            # a redirect on the same host is fine
            replies = send(sub, "model.update", update_body("same", f"{base}/to-same", model, "2"))
            assert replies[-1]["step"] == "commit", replies
            assert before != sha(model) and fresh_serving(sub) == sha(model)
            still_alive(sub, daemon, "schemes")
            assert daemon.stop() == 0
    log = (tmp_path / "dev1.log").read_text()
    assert sha(secret) not in log


def test_unsigned_or_forged_updates_are_refused_before_anything_is_fetched(
    tmp_path: Path, broker: Mosquitto, online: Callable[[Subscriber, Daemon], None]
) -> None:
    private, public = generate_keypair()
    other, _ = generate_keypair()
    model = V2.read_bytes()
    config = daemon_config(tmp_path, broker, f'public_keys = ["{public}"]\nprobation_results = 5\n')
    with http_files({"m": model}) as server:
        url = f"{server.base}/m"
        good = update_body("good", url, model, "2", private)
        attacks = [
            ("unsigned", update_body("unsigned", url, model, "2"), "unsigned"),
            ("other-key", update_body("other-key", url, model, "2", other), "matches none"),
            ("zeros", {**good, "id": "zeros", "signature": ZERO_SIGNATURE}, "matches none"),
            ("garbage", {**good, "id": "garbage", "signature": "not base64!"}, "not valid base64"),
            ("size", {**good, "id": "size", "size": len(model) + 1}, "matches none"),
            ("version", {**good, "id": "version", "version": "3"}, "matches none"),
            ("rollback-from", {**good, "id": "rollback-from", "rollback_from": "1"}, "matches none"),
            ("shadow", {**good, "id": "shadow", "url": SECRET.as_uri()}, None),  # signed, but not for this
        ]
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            online(sub, daemon)
            for name, body, error in attacks:
                replies = send(sub, "model.update", body)
                assert replies[0]["id"] == name
                if error is None:  # the location is not signed: it is refused by its scheme
                    assert replies[-1]["step"] == "download" and "is not allowed" in replies[-1]["error"]
                    continue
                (reply,) = replies  # at once, one reply
                assert reply["ok"] is False and reply["step"] == "signature" and error in reply["error"], (
                    reply
                )
            assert server.hits == [], server.hits
            assert sub.wait_for(lambda ms: len(events(sub, "model.refused")) == len(attacks), 20)
            replies = send(sub, "model.update", good)
            assert replies[-1]["step"] == "commit" and replies[1]["signed"] is True, replies
            assert server.hits == ["/m"]
            still_alive(sub, daemon, "signatures")
            assert daemon.stop() == 0


SECOND = f"""
[[pipelines]]
name = "second"
trigger = "camera"

[[pipelines.models]]
path = "{MODELS}/digits_int8.tflite"
version = "1"
inputs = [{{ kind = "image", source = "camera", resize = "crop", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", labels = "{MODELS}/digits_labels.txt", top_k = 1 }}
"""


def test_a_slow_drip_download_ends_at_its_deadline_and_blocks_no_other_update(
    tmp_path: Path, broker: Mosquitto, online: Callable[[Subscriber, Daemon], None]
) -> None:
    """The issue's example, exactly: a server that sends one byte a second held a
    ``download_timeout_s = 10`` update for minutes and blocked every other update. Here a real
    ``http.server`` on loopback drips one byte a second; the download ends at its 10 s deadline,
    and meanwhile the other pipeline updates from a fast URL."""
    model = V2.read_bytes()
    config = daemon_config(tmp_path, broker, "download_timeout_s = 10\nprobation_results = 5\n", SECOND)
    with http_files({"m": model}, drip_s=1.0) as server:
        slow = update_body("slow", f"{server.base}/drip/m", model, "2")
        fast = {**update_body("fast", f"{server.base}/m", model, "2"), "pipeline": "second"}
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            online(sub, daemon)
            started = time.monotonic()
            sub.publish("edge/dev1/cmd/model.update", json.dumps(slow).encode(), qos=1)
            assert sub.wait_for(lambda ms: any(m.topic == "edge/dev1/reply/slow" for m in ms), 20)
            fast_replies = send(sub, "model.update", fast)
            replies = collect(sub, "slow")
            took = time.monotonic() - started
            final = replies[-1]
            assert final["ok"] is False and final["step"] == "download", replies
            assert "not complete within 10 s" in final["error"], final
            assert 10 <= took < 10 + 6, f"the 10 s deadline ended the download after {took:.1f} s"
            assert fast_replies[-1]["ok"] and fast_replies[-1]["step"] == "commit", fast_replies
            fast_download = next(
                m.monotonic for m in sub.messages("edge/dev1/reply/fast") if m.json()["step"] == "download"
            )
            slow_end = sub.messages("edge/dev1/reply/slow")[-1].monotonic
            assert fast_download < slow_end, "the other pipeline's update waited for the slow download"
            assert fresh_serving(sub, "second") == sha(model)
            assert serving(sub, "digits") != sha(model)
            assert sub.wait_for(lambda ms: bool(events(sub, "model.refused")), 20)
            still_alive(sub, daemon, "drip")
            assert daemon.stop() == 0
    leftovers = [p.name for p in (tmp_path / "state-dev1" / "models").rglob("*.part")]
    assert leftovers == []


def test_replayed_older_models_and_rollbacks_are_refused(
    tmp_path: Path,
    broker: Mosquitto,
    online: Callable[[Subscriber, Daemon], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's examples: a validly signed older model replayed after a newer one was
    committed, and the unsigned ``model.rollback`` that downgraded. Variants: the same version
    with other bytes, an unorderable version, a downgrade permission for another state, replays of
    a permission and of a signed rollback, a rollback to a version not in the local history."""
    private, public = generate_keypair()
    v2, v3 = V2.read_bytes(), v3_bytes()
    config = daemon_config(tmp_path, broker, f'public_keys = ["{public}"]\nprobation_results = 5\n')

    def rollback(request_id: str, to: str | None = None, start: str | None = None, key: bytes | None = None,
                 **over: Any) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"id": request_id, "pipeline": "digits"}
        if to is not None and start is not None:
            body.update(version=to, rollback_from=start)
            if key is not None:
                body["signature"] = sign(key, SignedFields.rollback("digits", to, start))
        (reply,) = send(sub, "model.rollback", {**body, **over})
        return reply

    with http_files({"v2": v2, "v3": v3}) as server:
        url2, url3 = f"{server.base}/v2", f"{server.base}/v3"
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            online(sub, daemon)
            original = serving(sub)
            old = update_body("old", url2, v2, "2", private)
            assert send(sub, "model.update", old)[-1]["step"] == "commit"
            assert (
                send(sub, "model.update", update_body("new", url3, v3, "3", private))[-1]["step"] == "commit"
            )
            assert fresh_serving(sub) == sha(v3)
            hits = len(server.hits)
            attacks = [
                ("replay", {**old, "id": "replay"}, "not above '3'"),  # the exact request, again
                ("same", update_body("same", url2, v2, "3", private), "not above '3'"),
                ("older", update_body("older", url2, v2, "2.9.9", private), "not above '3'"),
                ("latest", update_body("latest", url2, v2, "latest", private), "cannot be ordered"),
                ("perm", update_body("perm", url2, v2, "2", private, rollback_from="2"), "runs now ('3')"),
            ]  # fmt: skip
            for name, body, error in attacks:
                (reply,) = send(sub, "model.update", body)
                assert reply["ok"] is False and reply["step"] == "version" and error in reply["error"], (
                    name,
                    reply,
                )
            assert len(server.hits) == hits, "a refused version was downloaded"
            # rollbacks: unsigned (the example), forged, not local, for another state
            for reply, error in [
                (rollback("rb-unsigned"), "must name 'version' and 'rollback_from' and be signed"),
                (rollback("rb-unsigned-named", "2", "3"), "unsigned"),
                (rollback("rb-forged", "2", "3", private, signature=ZERO_SIGNATURE), "matches none"),
                (rollback("rb-other-key", "2", "3", generate_keypair()[0]), "matches none"),
                (rollback("rb-not-local", "0.5", "3", private), "not in the local history"),
                (rollback("rb-config", "1", "3", private), "not in the local history"),
                (rollback("rb-other-state", "2", "2", private), "runs now ('3')"),
            ]:
                assert reply["ok"] is False and error in reply["error"], (error, reply)
            refused = len(attacks) + 7
            assert sub.wait_for(lambda ms: len(events(sub, "model.refused")) == refused, 20)
            assert fresh_serving(sub) == sha(v3)
            # an explicit, signed downgrade from the state the device is in works once
            permitted = update_body("permitted", url2, v2, "2", private, rollback_from="3")
            assert send(sub, "model.update", permitted)[-1]["step"] == "commit"
            assert fresh_serving(sub) == sha(v2)
            again = send(sub, "model.update", {**permitted, "id": "permitted-again"})  # a no-op now
            assert again[-1]["step"] == "commit" and again[-1]["already"] is True, again
            # back to 3 needs a permission too: the floor stays at the highest version committed
            (reply,) = send(sub, "model.update", update_body("up-again", url3, v3, "3", private))
            assert reply["step"] == "version", reply
            up = update_body("up-again-2", url3, v3, "3", private, rollback_from="2")
            assert send(sub, "model.update", up)[-1]["step"] == "commit"
            # back at 3, the first permission (from 3 to 2) would apply again: it is single-use
            (reply,) = send(sub, "model.update", {**permitted, "id": "permitted-replay"})
            assert reply["step"] == "version" and "used already" in reply["error"], reply
            # a signed rollback within the local history works (sent by the operator's tool), and
            # only from the state it names
            key_file = write_private_key(tmp_path / "fleet.key", private)
            where = f"{broker.host}:{broker.port}"
            argv = ["rollback", "--broker", where, "--pipeline", "digits", "--to", "2", "--from", "3"]
            code = fleet_main([*argv, "--key", str(key_file), "--json"])
            report = json.loads(capsys.readouterr().out)
            assert code == 0 and report["devices"][0]["version"] == "2", report
            assert fresh_serving(sub) == sha(v2)
            replay = rollback("rb-replay", "2", "3", private)
            assert replay["ok"] is False and "works once" in replay["error"], replay
            listing = send(sub, "model.list", {"id": "list", "pipeline": "digits"})[0]
            assert listing["floor"] == "3", listing
            assert original != sha(v2)
            still_alive(sub, daemon, "replay")
            assert daemon.stop() == 0


def test_chunk_floods_are_bounded_by_one_quota_and_expire_while_running(
    tmp_path: Path, broker: Mosquitto, online: Callable[[Subscriber, Daemon], None]
) -> None:
    """The issue's example: 500 ``model.chunk`` commands left 19 MB on disk for 24 h. Here: 500
    transfer ids, 30 KB each, against ``max_transfers = 2``, a 256 KiB quota and a 3 s expiry."""
    quota = 262144
    config = daemon_config(
        tmp_path,
        broker,
        f"max_transfers = 2\ntransfer_quota_bytes = {quota}\ntransfer_expiry_s = 3\nprobation_results = 5\n",
    )
    downloads = tmp_path / "state-dev1" / "downloads"

    def on_disk() -> int:
        return sum(p.stat().st_size for p in downloads.rglob("*") if p.is_file()) if downloads.exists() else 0

    piece = base64.b64encode(os.urandom(30_000)).decode()
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        online(sub, daemon)
        started = time.monotonic()
        for n in range(500):
            body = {"id": f"c{n}", "transfer": f"flood{n}", "index": 0, "total": 2, "data": piece}
            sub.publish("edge/dev1/cmd/model.chunk", json.dumps(body).encode(), qos=1)
        peak_transfers = peak_bytes = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # watch the disk while the flood is handled
            peak_bytes = max(peak_bytes, on_disk())
            entries = list(downloads.iterdir()) if downloads.exists() else []
            peak_transfers = max(peak_transfers, len([e for e in entries if e.name.startswith("flood")]))
            answered = {m.topic for m in sub.messages("edge/dev1/reply/+") if "/reply/c" in m.topic}
            if len(answered) == 500:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        replies = [sub.json(f"edge/dev1/reply/c{n}")[0] for n in range(500)]
        accepted = [r for r in replies if r["ok"]]
        refusals = [r["error"] for r in replies if not r["ok"]]
        # every refusal is a documented one: the transfer bound, or the command queue's bound when
        # the flood arrives faster than the worker takes it
        documented = ("transfers are already in progress", "too many commands waiting")
        assert all(any(d in e for d in documented) for e in refusals), sorted(set(refusals))[:5]
        assert any(documented[0] in e for e in refusals), refusals[:5]
        # two slots, each freed only by its transfer's 3 s expiry: however slowly the flood was
        # handled, no more than two transfers per started expiry period were taken
        assert accepted and len(accepted) <= 2 * (int(elapsed / 3) + 1), (len(accepted), elapsed)
        # at most 2 at once; more than 2 in total only because older ones expired meanwhile
        assert peak_transfers <= 2 and peak_bytes <= quota, (peak_transfers, peak_bytes)
        assert events(sub, "model.chunk_refused"), "refused chunks must be reported as events"
        # nobody sends anything more: the transfers expire while the daemon runs
        assert wait_until(lambda: on_disk() == 0 and not any(downloads.iterdir()), 15), list(
            downloads.iterdir()
        )
        # one transfer that outgrows the quota (40 chunks of 30 KB announced, 256 KiB allowed)
        big = [
            {"id": f"big{i}", "transfer": "big", "index": i, "total": 40, "data": piece} for i in range(12)
        ]
        errors = [send(sub, "model.chunk", b)[0].get("error", "") for b in big]
        assert sum("the quota" in e for e in errors) >= 3 and errors[0] == "", errors
        assert on_disk() <= quota
        assert wait_until(lambda: on_disk() == 0 and not any(downloads.iterdir()), 15), list(
            downloads.iterdir()
        )
        # and a real transfer works again
        model = V2.read_bytes()
        parts = [model[i : i + 30_000] for i in range(0, len(model), 30_000)]
        for i, part in enumerate(parts):
            body = {"id": f"ok{i}", "transfer": "real", "index": i, "total": len(parts),
                    "data": base64.b64encode(part).decode()}  # fmt: skip
            (reply,) = send(sub, "model.chunk", body)
            assert reply["ok"], reply
        assert reply["complete"] is True
        update = {"id": "u1", "pipeline": "digits", "transfer": "real", "sha256": sha(model),
                  "size": len(model), "version": "2"}  # fmt: skip
        assert send(sub, "model.update", update)[-1]["step"] == "commit"
        assert on_disk() == 0
        still_alive(sub, daemon, "chunks")
        assert daemon.stop() == 0


def test_probation_ends_without_a_commit_when_its_pipeline_stops_serving_the_candidate(
    tmp_path: Path, broker: Mosquitto, online: Callable[[Subscriber, Daemon], None]
) -> None:
    """The issue's examples: a SIGHUP or ``config.update`` during probation reported ``commit``
    and ``model.committed`` while the device still served the old model; a paused pipeline passed
    probation with 0 results. Each interruption here ends the probation with a rollback (reply
    and event), nothing is committed, and the daemon serves the old model; then a stop."""
    model = V2.read_bytes()
    config = daemon_config(tmp_path, broker, "probation_s = 60\nprobation_results = 100000\n")
    store = tmp_path / "state-dev1" / "models" / "digits"
    with http_files({"m": model}) as server:
        url = f"{server.base}/m"
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            online(sub, daemon)
            original = serving(sub)

            def swapped(name: str) -> None:
                """Send an update of V2 and wait until it is on probation."""
                body = json.dumps(update_body(name, url, model, "2")).encode()
                sub.publish("edge/dev1/cmd/model.update", body, qos=1)
                topic = f"edge/dev1/reply/{name}"
                assert sub.wait_for(
                    lambda ms: any(m.topic == topic and m.json().get("step") == "swap" for m in ms), 60
                ), sub.json(topic)

            def interrupt(name: str, action: Callable[[], object], words: str) -> None:
                swapped(name)
                action()
                final = collect(sub, name)[-1]
                assert final["ok"] is False and final["step"] == "probation", final
                assert final["rolled_back"] is True and final["interrupted"] is True, final
                assert words in final["error"], final
                assert not events(sub, "model.committed"), "committed during an interruption"

                def rolled() -> list[dict[str, Any]]:  # events go through the outbox: later than replies
                    return [e for e in events(sub, "model.rolled_back") if e.get("update_id") == name]

                assert sub.wait_for(lambda ms: bool(rolled()), 20), events(sub, "model.rolled_back")
                assert rolled()[-1]["interrupted"] is True, rolled()
                assert fresh_serving(sub) == original
                assert not (store / "current.json").exists() and not (store / "probation.json").exists()

            interrupt(
                "paused", lambda: send(sub, "pipeline.pause", {"id": "p1", "pipeline": "digits"}), "paused"
            )
            # paused already: refused at the swap, nothing swapped (the 0-results case)
            final = send(sub, "model.update", update_body("while-paused", url, model, "2"))[-1]
            assert final["step"] == "swap" and "is paused" in final["error"], final
            send(sub, "pipeline.resume", {"id": "r1", "pipeline": "digits"})
            text = config.read_text()
            interrupt(
                "config-update", lambda: send(sub, "config.update", {"id": "cu", "config": text}), "reloaded"
            )
            interrupt("sighup", lambda: daemon.proc.send_signal(signal.SIGHUP), "reloaded")
            still_alive(sub, daemon, "probation")
            # a stop during probation: nothing is committed, the next start serves the old model
            swapped("stop")
            assert daemon.stop() == 0
        assert not (store / "current.json").exists()
        sub_history = (store / "history.jsonl").read_text()
        assert '"committed"' not in sub_history
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            assert sub.wait_for(
                lambda ms: any(m.topic == "edge/dev1/health" and not m.retain for m in ms), 40
            ), daemon.log()[-3000:]
            assert fresh_serving(sub) == original
            still_alive(sub, daemon, "restart")
            assert daemon.stop() == 0


def test_the_real_pipeline_ends_a_watch_on_pause_reload_and_stop(tmp_path: Path) -> None:
    """The hook probation relies on, on a real :class:`Pipeline` of a real service (video file,
    bundled model): each way a pipeline stops serving the candidate ends the watch, and a
    pipeline being replaced by a reload refuses a new one."""
    from edge_runtime.daemon.service import Service

    config_path = digits_config(tmp_path, port=None)
    service = Service(load_config(config_path), [], config_path=config_path)
    service.build()
    service.start()
    try:
        pipeline = service.pipelines[0]
        assert wait_until(lambda: pipeline.results > 3, 30)
        original = pipeline.serving()

        class Recorder:
            def __init__(self) -> None:
                self.results = 0
                self.ended: list[str] = []

            def observe(self, outputs: list[npt.NDArray[Any]], invoke_ms: float) -> None:
                self.results += 1

            def end(self, reason: str) -> None:
                self.ended.append(reason)

        candidate = pipeline.runner_for(V2, "2")
        watch = Recorder()
        assert pipeline.begin_watch(candidate, watch) is original
        assert wait_until(lambda: watch.results >= 3, 20), "results of the watched model are observed"
        pipeline.paused = True
        assert watch.ended == ["pipeline digits was paused"]
        with pytest.raises(PipelineError, match="is paused"):
            pipeline.begin_watch(candidate, Recorder())
        pipeline.paused = False
        second = Recorder()
        pipeline.begin_watch(candidate, second)
        pipeline.watch_slot.block("is being replaced: the config was reloaded")
        assert second.ended == ["is being replaced: the config was reloaded"]
        with pytest.raises(PipelineError, match="being replaced"):
            pipeline.begin_watch(candidate, Recorder())
        pipeline.watch_slot.allow()
        third = Recorder()
        pipeline.begin_watch(candidate, third)
        pipeline.end_watch("", third)  # the updater's own end: no callback
        assert third.ended == []
        fourth = Recorder()
        pipeline.begin_watch(candidate, fourth)
        reloaded = service.reload()  # a real reload: the watched pipeline object is replaced
        assert fourth.ended == ["is being replaced: the config was reloaded"], reloaded
        assert service.pipelines[0] is not pipeline
        fifth = Recorder()
        service.pipelines[0].begin_watch(service.pipelines[0].runner_for(V2, "2"), fifth)
        service.pipelines[0].request_stop()
        assert fifth.ended == ["pipeline digits was stopped"]
    finally:
        service.shutdown(5)
