"""Serial source over real ptys (socat) and pyserial URLs: formats, bad lines, unplug and replug."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial
from pydantic import ValidationError

from devkit.processes import SocatPair, socat_pair, wait_until
from edge_runtime.sources.serial import TOO_LONG, LineSplitter, SerialConfig, SerialSource

FAST_RECONNECT = {"initial_s": 0.1, "max_s": 0.5, "factor": 2.0, "jitter": 0.1}


def config(port: Path | str, **options: Any) -> SerialConfig:
    data: dict[str, Any] = {"type": "serial", "port": str(port), "reconnect": FAST_RECONNECT}
    data.update(options)
    return SerialConfig.model_validate(data)


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[SocatPair]:
    with socat_pair(tmp_path) as pair:
        yield pair


@contextmanager
def running(source: SerialSource, up: bool = True) -> Iterator[SerialSource]:
    source.start()
    try:
        if up:
            assert wait_until(lambda: source.state == "up"), f"not up: {source.stats()}"
        yield source
    finally:
        source.stop()
        assert not source.alive


@contextmanager
def writer(path: Path) -> Iterator[serial.Serial]:
    port = serial.Serial(str(path), timeout=1, write_timeout=5)
    try:
        yield port
    finally:
        port.close()


# -- config -------------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    c = config("/dev/ttyUSB0", format="kv")
    assert (c.baudrate, c.bytesize, c.parity, c.stopbits, c.capacity, c.max_line_bytes) == (
        115200,
        8,
        "N",
        1,
        4096,
        1024,
    )
    assert config("loop://", format="nmea", stopbits=1.5, parity="E", bytesize=7).stopbits == 1.5
    cases: list[tuple[dict[str, Any], str]] = [
        ({"format": "csv"}, "needs 'fields'"),
        ({"format": "kv", "fields": ["a"]}, "only used by the csv format"),
        ({"format": "csv", "fields": ["a", "a"]}, "duplicate"),
        ({"format": "kv", "stopbits": 3}, "stopbits must be 1, 1.5 or 2"),
        ({"format": "kv", "parity": "X"}, "parity"),
        ({"format": "kv", "encoding": "klingon"}, "unknown text encoding"),
        ({"format": "kv", "baud": 9600}, "Extra inputs are not permitted"),
        ({"format": "xml"}, "format"),
    ]
    for options, message in cases:
        with pytest.raises(ValidationError, match=message):
            config("/dev/ttyUSB0", **options)
    assert config("/dev/ttyUSB0", format="csv", fields=["_", "a", "_"]).fields == ["_", "a", "_"]


def test_every_config_field_is_described() -> None:
    for name, field in SerialConfig.model_fields.items():
        assert field.description, f"SerialConfig.{name} has no description"


# -- line splitting -----------------------------------------------------------------------------------


def test_line_splitter_partial_crlf_and_overlong() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b"a=1\r\nb=") == ([b"a=1"], 0)
    assert splitter.feed(b"2\n\n") == ([b"b=2", b""], 0)
    assert splitter.feed(b"x" * 11) == ([], 1)  # too long already: dropped, counted once
    assert splitter.feed(b"y" * 50) == ([], 0)
    assert splitter.feed(b"zz\nc=3\n") == ([b"c=3"], 0)  # the tail is dropped up to its newline
    assert splitter.feed(b"0123456789A\nd=4\n") == ([b"d=4"], 1)  # long line inside one chunk
    assert splitter.feed(b"0123456789\n") == ([b"0123456789"], 0)  # exactly the limit is fine


# -- real ports --------------------------------------------------------------------------------------------


def test_pyserial_url_port_opens() -> None:
    with running(SerialSource("loop", config("loop://", format="kv"))) as source:
        assert source.stats()["state"] == "up"
    assert source.state == "stopped"


def test_missing_port_is_down_and_retried(tmp_path: Path) -> None:
    missing = tmp_path / "ttyMISSING"
    with running(SerialSource("gone", config(missing, format="kv")), up=False) as source:
        assert wait_until(lambda: source.state == "down" and source.reconnects >= 2)
        assert str(missing) in source.last_error


FORMATS: list[tuple[dict[str, Any], list[bytes], dict[str, list[float]]]] = [
    (
        {"format": "csv", "fields": ["_", "ax", "ay"], "delimiter": ";"},
        [b"100;0.5;-1\r\n", b"101;1.5;2e-1\n"],
        {"ax": [0.5, 1.5], "ay": [-1.0, 0.2]},
    ),
    ({"format": "kv"}, [b"ax=0.5 ay=1\n", b"ax:2,ay:-3\n"], {"ax": [0.5, 2.0], "ay": [1.0, -3.0]}),
    (
        {"format": "json"},
        [b'{"ax": 0.5, "imu": {"t": 21.5}, "id": "s1"}\n', b'{"ax": 2, "imu": {"t": 22}}\n'],
        {"ax": [0.5, 2.0], "imu.t": [21.5, 22.0]},
    ),
    (
        {"format": "nmea"},
        [
            b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n",
            b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n",
        ],
        {"fix": [1.0, 1.0], "altitude": [545.4], "speed": [22.4 * 1852 / 3600]},
    ),
]


@pytest.mark.parametrize(("options", "lines", "expected"), FORMATS, ids=["csv", "kv", "json", "nmea"])
def test_formats_over_a_pty(
    pty: SocatPair, options: dict[str, Any], lines: list[bytes], expected: dict[str, list[float]]
) -> None:
    with running(SerialSource("s", config(pty.a, **options))) as source, writer(pty.b) as out:
        t_before = time.monotonic()
        for line in lines:
            out.write(line)
        assert wait_until(lambda: source.lines == len(lines)), source.stats()
        t_after = time.monotonic()
        for channel, values in expected.items():
            times, got = source.buffers.window(channel)
            assert got.tolist() == pytest.approx(values), channel
            assert np.all((times >= t_before) & (times <= t_after))
        assert source.parse_errors_total == 0
        assert source.seq == len(lines)


def test_garbled_lines_are_counted_and_good_lines_arrive(pty: SocatPair) -> None:
    rng = random.Random(1234)
    garbage: list[tuple[bytes, str]] = [
        (b"1.0,2.0", "field count"),
        (b"1.0,abc,3.0", "not a number"),
        (b"1.0,nan,3.0", "not finite"),
        (b"\xff\xfe\x00,1,2", "undecodable"),
        (b"#" * 200, TOO_LONG),
        (b"1.0,2.0,3.0,4.0", "field count"),
    ]
    good: list[tuple[float, float, float]] = []
    expected_errors: dict[str, int] = {}
    payload = bytearray()
    for i in range(400):
        if rng.random() < 0.1:
            line, why = rng.choice(garbage)
            expected_errors[why] = expected_errors.get(why, 0) + 1
        else:
            values = (float(i), rng.uniform(-2, 2), 1.0 + i / 1000)
            good.append(values)
            line = ",".join(repr(v) for v in values).encode()
        payload += line + (b"\r\n" if i % 3 == 0 else b"\n")
    assert 20 <= sum(expected_errors.values()) <= 70

    cfg = config(pty.a, format="csv", fields=["n", "ax", "az"], max_line_bytes=128)
    with running(SerialSource("imu", cfg)) as source, writer(pty.b) as out:
        for start in range(0, len(payload), 700):  # chunks that cut lines in the middle
            out.write(bytes(payload[start : start + 700]))
        total = len(good) + sum(expected_errors.values())
        assert wait_until(lambda: source.lines + source.parse_errors_total >= total), source.stats()
        time.sleep(0.2)  # nothing more may arrive
        assert source.lines == len(good)
        assert source.parse_errors == expected_errors
        times, n = source.buffers.window("n")
        assert n.tolist() == [g[0] for g in good]
        assert source.buffers.window("ax")[1].tolist() == [g[1] for g in good]
        assert np.all(np.diff(times) >= 0)
        stats = source.stats()
        assert stats["lines"] == len(good)
        assert stats["parse_errors_total"] == sum(expected_errors.values())
        assert stats["rate_hz"] > 0
        assert sorted(stats["channels"]) == ["ax", "az", "n"]


def test_overlong_line_is_discarded_up_to_its_newline(pty: SocatPair) -> None:
    cfg = config(pty.a, format="kv", max_line_bytes=32)
    with running(SerialSource("s", cfg)) as source, writer(pty.b) as out:
        out.write(b"a=1\n")
        assert wait_until(lambda: source.lines == 1)
        for _ in range(10):  # 1000 bytes without a newline, in pieces
            out.write(b"a=9" * 33 + b" ")
            out.flush()
            time.sleep(0.01)
        out.write(b"a=9\na=2\n")
        assert wait_until(lambda: source.lines == 2), source.stats()
        assert source.parse_errors == {TOO_LONG: 1}
        assert source.buffers.window("a")[1].tolist() == [1.0, 2.0]


def test_channels_filter_and_ignored_lines(pty: SocatPair) -> None:
    cfg = config(pty.a, format="kv", channels=["ax"])
    with running(SerialSource("s", cfg)) as source, writer(pty.b) as out:
        assert source.buffers.channels == ["ax"]
        out.write(b"ax=1 ay=2\nay=3\nax=4 temp=20\n")
        assert wait_until(lambda: source.lines == 2 and source.ignored == 1), source.stats()
        assert source.buffers.channels == ["ax"]
        assert source.buffers.window("ax")[1].tolist() == [1.0, 4.0]


def test_port_removed_and_back(pty: SocatPair) -> None:
    events: list[str] = []
    source = SerialSource("imu", config(pty.a, format="kv"))
    source.add_listener(lambda name, state, detail: events.append(state))
    with running(source):
        with writer(pty.b) as out:
            for i in range(5):
                out.write(f"n={i}\n".encode())
            assert wait_until(lambda: source.lines == 5)

        pty.kill()  # unplugged
        assert wait_until(lambda: source.state == "down"), source.stats()
        assert str(pty.a) in source.last_error
        reconnects = source.reconnects
        assert wait_until(lambda: source.reconnects >= reconnects + 2)  # it keeps trying
        assert source.state == "down"

        pty.start()  # plugged in again, same names
        assert wait_until(lambda: source.state == "up"), source.stats()
        with writer(pty.b) as out:
            for i in range(5, 10):
                out.write(f"n={i}\n".encode())
            assert wait_until(lambda: source.lines == 10), source.stats()
        times, values = source.buffers.window("n")
        assert values.tolist() == [float(i) for i in range(10)]
        assert np.all(np.diff(times) >= 0)  # lines read in one chunk share their arrival time
        assert times[5] > times[4]
    assert events[:4] == ["starting", "up", "down", "up"]
    assert events[-1] == "stopped"
