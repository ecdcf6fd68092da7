"""The pipeline's three stages inside a real service: order and numbering under back-pressure,
a stage thread that keeps crashing taking the daemon down with status 1, and results that wait
stored together (group commit) and delivered in order."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from devkit.broker import Mosquitto
from devkit.daemon import digits_model
from devkit.mqtt_client import Subscriber
from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video


class Sink:
    """Collects results; sleeps ``delay`` s in each (a slow consumer) or raises at result ``fail_at``."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.results: list[dict[str, Any]] = []
        self.delay = delay
        self.fail_at = fail_at

    def publish(self, result: dict[str, Any]) -> None:
        if self.fail_at is not None and len(self.results) + 1 >= self.fail_at:
            raise RuntimeError("sink broke")
        time.sleep(self.delay)
        self.results.append(result)

    def close(self) -> None:
        pass


def _service(tmp_path: Path, sink: Sink, n: int, realtime: bool, port: int | None = None) -> Service:
    with np.load(MODELS / "digits_heldout.npz") as data:
        images = data["images"][:n]
    write_digits_video(tmp_path / "digits.avi", list(images), fps=30.0)
    config = validate(
        {
            "device": {"id": "stages", "state_dir": str(tmp_path / "state")},
            "mqtt": {"enabled": False} if port is None else {"host": "127.0.0.1", "port": port},
            "sources": {
                "camera": {"type": "camera", "uri": str(tmp_path / "digits.avi"), "realtime": realtime}
            },
            "pipelines": [
                {
                    "name": "digits",
                    "trigger": "camera",
                    "models": [digits_model(postprocess={"type": "classification", "top_k": 1})],
                }
            ],
        },
        tmp_path,
    )
    return Service(config, [sink], duration_s=120)


def test_a_slow_consumer_slows_the_stages_down_and_loses_nothing(tmp_path: Path) -> None:
    sink = Sink(delay=0.02)  # much slower than the model: the hand-off queues fill up
    service = _service(tmp_path, sink, 60, realtime=False)
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished"
    assert [r["seq"] for r in sink.results] == list(range(1, 61)), "every frame once, numbered in order"
    assert [r["trigger"]["seq"] for r in sink.results] == list(range(1, 61))
    pipeline = service.pipelines[0]
    assert pipeline.results == pipeline.handed_over == 60
    for r in sink.results:
        latency = r["latency_ms"]
        assert latency["total"] >= latency["pre"] + latency["invoke"] + latency["post"] - 0.01


def test_a_result_thread_that_keeps_crashing_stops_the_daemon_with_status_1(tmp_path: Path) -> None:
    """Each crash is restarted (the result in hand is lost, the next one handled); a thread that
    crashes more than the supervisor allows is given up: the watchdog is no longer fed and the
    daemon exits with status 1 for the service manager to restart it."""
    sink = Sink(fail_at=5)
    service = _service(tmp_path, sink, 300, realtime=True)
    runner = threading.Thread(target=service.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        assert wait_until(service.stop_event.is_set, 60), "the daemon goes on with a crashing result stage"
        assert "thread results-digits cannot be restarted" in service.stop_reason
        assert [r["seq"] for r in sink.results] == [1, 2, 3, 4]
    finally:
        service.stop("test over")
        runner.join(30)
    assert not runner.is_alive()
    assert service.exit_code == 1


def test_results_waiting_together_are_stored_in_one_transaction_and_delivered_in_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A slow sink makes results wait for the result stage: each group is written to the outbox
    in one transaction (with the pipeline's seq), every result reaches a real subscriber once, in
    order, and the outbox's stored seq is the last one."""
    sink = Sink(delay=0.01)
    service = _service(tmp_path, sink, 80, realtime=False, port=broker.port)
    with Subscriber(broker.host, broker.port, ["edge/stages/pipelines/digits/results"], qos=1) as sub:
        service.run(install_signals=False)
        assert sub.wait_for(lambda ms: len(ms) >= 80, 30)
        delivered = [m["seq"] for m in sub.json("edge/stages/pipelines/digits/results")]
    assert service.stop_reason == "every pipeline finished"
    assert delivered == list(range(1, 81)), "every result once, in order"
    assert [r["seq"] for r in sink.results] == list(range(1, 81))
    groups, grouped = service.pipelines[0].engine.result_groups
    assert grouped == 80 and groups < 80, f"no result waited for another ({groups} groups)"
    assert service.pipelines[0].stats()["results_per_write"] == round(80 / groups, 2)
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        assert db.execute("SELECT seq FROM seqs WHERE pipeline = 'digits'").fetchone() == (80,)
        assert db.execute("SELECT count(*) FROM messages WHERE topic LIKE '%/results'").fetchone() == (0,)


def test_a_group_with_a_result_the_outbox_refuses_stores_every_other_result(tmp_path: Path) -> None:
    """A result over the outbox's bound fails the group's transaction: the group is then stored
    one by one, so only that result is refused (and counted), in order, each with its seq."""
    from edge_runtime.reporting.reporter import Reporter

    base = _service(tmp_path, Sink(), 1, realtime=False, port=1).config  # port 1: never connected
    config = base.model_copy(update={"outbox": base.outbox.model_copy(update={"max_bytes": 4096})})
    reporter = Reporter(config, "test", ["p"])
    assert reporter.outbox is not None
    docs: list[dict[str, Any]] = [
        {"pipeline": "p", "seq": n, "pad": "x" * (9000 if n == 3 else 10)} for n in (1, 2, 3, 4)
    ]
    try:
        reporter.publish_many(docs)
        stored = [json.loads(m.payload)["seq"] for m in reporter.outbox.peek(10)]
        assert stored == [1, 2, 4]
        assert reporter.store_errors == 1 and "exceeds the outbox bound" in reporter.last_store_error
        assert reporter.outbox.last_seq("p") == 4
        reporter.publish_many([{**d, "seq": d["seq"] + 4} for d in docs[:2]])  # a group again
        assert [json.loads(m.payload)["seq"] for m in reporter.outbox.peek(10)] == [1, 2, 4, 5, 6]
    finally:
        reporter.outbox.close()
