"""Line parsers: every format, their error reasons, and fuzzing that only ParseError escapes."""

from __future__ import annotations

import json
import math
from functools import reduce
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import ParseError
from edge_runtime.sources.parsers import (
    PARSERS,
    ErrorTally,
    make_parser,
    parse_csv,
    parse_json,
    parse_kv,
    parse_nmea,
)


def nmea(body: str) -> str:
    """A sentence with its checksum, computed here independently of the parser."""
    checksum = reduce(lambda acc, ch: acc ^ ord(ch), body, 0)
    return f"${body}*{checksum:02X}"


def reason(fn: Any, *args: Any) -> str:
    with pytest.raises(ParseError) as info:
        fn(*args)
    return str(info.value)


# -- csv --------------------------------------------------------------------------------------------


def test_csv_names_columns_in_order() -> None:
    assert parse_csv("0.1,-0.2,9.81", ["ax", "ay", "az"]) == {"ax": 0.1, "ay": -0.2, "az": 9.81}
    assert parse_csv(" 1 ; 2e3 ", ["a", "b"], delimiter=";") == {"a": 1.0, "b": 2000.0}


def test_csv_skips_underscore_columns() -> None:
    assert parse_csv("12:00:01,OK,3.5", ["_", "_", "temp"]) == {"temp": 3.5}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1,2", "field count"),
        ("1,2,3,4", "field count"),
        ("1,abc,3", "not a number"),
        ("1,,3", "empty value"),
        ("1,nan,3", "not finite"),
        ("1,inf,3", "not finite"),
        ("1,-Infinity,3", "not finite"),
        ("1,1e999,3", "not finite"),
        ("1,1_000,3", "not a number"),
        ("", "empty line"),
        ("   ", "empty line"),
    ],
)
def test_csv_errors(line: str, expected: str) -> None:
    assert reason(parse_csv, line, ["a", "b", "c"]) == expected


# -- kv ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["ax=0.1 ay=0.2", "ax:0.1,ay:0.2", "ax=0.1;ay=0.2", "  ax = 0.1 , ay:0.2 ", "ax=0.1\tay=0.2"],
)
def test_kv_styles(line: str) -> None:
    assert parse_kv(line) == {"ax": 0.1, "ay": 0.2}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "empty line"),
        ("ax", "bad pair"),
        ("=1", "bad pair"),
        ("ax=", "empty value"),
        ("ax=one", "not a number"),
        ("ax=1 ax=2", "duplicate key"),
        ("ax=nan", "not finite"),
        ("t=12:30", "not a number"),
    ],
)
def test_kv_errors(line: str, expected: str) -> None:
    assert reason(parse_kv, line) == expected


# -- json -------------------------------------------------------------------------------------------


def test_json_keeps_numbers_and_bools_and_flattens_objects() -> None:
    line = json.dumps(
        {"ax": 1, "ay": -0.5, "ok": True, "bad": False, "acc": {"x": 2, "g": {"z": 3.5}}, "id": "s1"}
        | {"list": [1, 2], "none": None}
    )
    assert parse_json(line) == {
        "ax": 1.0,
        "ay": -0.5,
        "ok": 1.0,
        "bad": 0.0,
        "acc.x": 2.0,
        "acc.g.z": 3.5,
    }


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "empty line"),
        ("{", "invalid json"),
        ("[1, 2]", "not an object"),
        ("3.5", "not an object"),
        ('{"name": "x"}', "no numeric values"),
        ("{}", "no numeric values"),
        ('{"a": NaN}', "not finite"),
        ('{"a": 1e999}', "not finite"),
        ('{"a": ' + "9" * 400 + "}", "not finite"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid json"),
    ],
)
def test_json_errors(line: str, expected: str) -> None:
    assert reason(parse_json, line) == expected


def test_json_nesting_is_bounded() -> None:
    deep = '{"a": ' * 40 + "1" + "}" * 40
    assert reason(parse_json, deep) == "json too deep"


# -- nmea -------------------------------------------------------------------------------------------

GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def test_nmea_gga_reference_sentence() -> None:
    values = parse_nmea(GGA)
    assert values["lat"] == pytest.approx(48 + 7.038 / 60)
    assert values["lon"] == pytest.approx(11 + 31.0 / 60)
    assert values["altitude"] == pytest.approx(545.4)
    assert values["fix"] == 1.0
    assert values["satellites"] == 8.0
    assert set(values) == {"lat", "lon", "altitude", "fix", "satellites"}


def test_nmea_rmc_reference_sentence() -> None:
    values = parse_nmea(RMC)
    assert values["lat"] == pytest.approx(48.1173)
    assert values["lon"] == pytest.approx(11.516666, abs=1e-6)
    assert values["speed"] == pytest.approx(22.4 * 1852 / 3600)
    assert values["course"] == pytest.approx(84.4)
    assert values["fix"] == 1.0


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "BD"])
def test_nmea_any_talker_and_southern_western_hemispheres(talker: str) -> None:
    gga = parse_nmea(nmea(f"{talker}GGA,091500.00,3351.1234,S,15112.5000,W,2,12,0.8,-12.5,M,20.1,M,,"))
    assert gga["lat"] == pytest.approx(-(33 + 51.1234 / 60))
    assert gga["lon"] == pytest.approx(-(151 + 12.5 / 60))
    assert gga["altitude"] == -12.5
    assert gga["fix"] == 2.0
    rmc = parse_nmea(nmea(f"{talker}RMC,091500.00,A,3351.1234,S,15112.5000,W,0.0,,010126,,,A"))
    assert rmc["lat"] == pytest.approx(-(33 + 51.1234 / 60))
    assert rmc["speed"] == 0.0
    assert "course" not in rmc  # empty field: left out, not zero


def test_nmea_without_fix_leaves_out_the_position() -> None:
    assert parse_nmea(nmea("GPGGA,000001.00,,,,,0,00,99.99,,,,,,")) == {"fix": 0.0, "satellites": 0.0}
    assert parse_nmea(nmea("GNRMC,000001.00,V,,,,,,,010126,,,N")) == {"fix": 0.0}


def test_nmea_checksum_is_case_insensitive_and_blanks_are_ignored() -> None:
    assert RMC.endswith("*6A")
    assert parse_nmea(RMC[:-1] + "a  \r") == parse_nmea(RMC)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (GGA[:-2] + "48", "bad checksum"),
        (GGA.replace("545.4", "545.5"), "bad checksum"),
        (GGA[:-3], "missing checksum"),
        (GGA[:-1], "missing checksum"),
        (GGA[:-2] + "ZZ", "bad checksum"),
        (GGA[1:], "not nmea"),
        ("", "not nmea"),
        (nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"), "unsupported sentence"),
        (nmea("PGRME,15.0,M,45.0,M,25.0,M"), "unsupported sentence"),
        (nmea("GPGGA,123519,4807.038,N"), "field count"),
        (nmea("GPGGA,123519,4807.038,N,01131.000,E,x,08,0.9,545.4,M,46.9,M,,"), "bad fix quality"),
        (nmea("GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad coordinate"),
        (nmea("GPGGA,123519,4867.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad coordinate"),
        (nmea("GPGGA,123519,4807.038,N,,,1,08,0.9,545.4,M,46.9,M,,"), "bad coordinate"),
        (nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,abc,M,46.9,M,,"), "not a number"),
        (nmea("GPRMC,123519,Q,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "bad status"),
        ("$GPGGA,é*00", "bad checksum"),
    ],
)
def test_nmea_errors(line: str, expected: str) -> None:
    assert reason(parse_nmea, line) == expected


# -- registry ---------------------------------------------------------------------------------------


def test_registry_and_make_parser() -> None:
    assert set(PARSERS) == {"csv", "kv", "json", "nmea"}
    assert make_parser("csv", ["a", "b"], ";")("1;2") == {"a": 1.0, "b": 2.0}
    assert make_parser("kv")("a=1") == {"a": 1.0}
    assert make_parser("json")('{"a": 1}') == {"a": 1.0}
    assert make_parser("nmea")(GGA)["fix"] == 1.0
    with pytest.raises(ValueError, match="needs 'fields'"):
        make_parser("csv")
    with pytest.raises(ValueError, match="unknown line format 'xml'"):
        make_parser("xml")


def test_error_tally_counts_by_reason() -> None:
    tally = ErrorTally()
    for r in ["bad checksum", "not a number", "bad checksum"]:
        tally.add(r)
    assert tally.snapshot() == {"bad checksum": 2, "not a number": 1}
    assert tally.total == 3


# -- fuzzing: random input never raises anything but ParseError ----------------------------------------

ALL = [
    lambda line: parse_csv(line, ["a", "_", "c"]),
    lambda line: parse_csv(line, ["a"], delimiter=" "),
    parse_kv,
    parse_json,
    parse_nmea,
]


def check_contract(line: str) -> None:
    for parser in ALL:
        try:
            values = parser(line)
        except ParseError as exc:
            assert str(exc) and len(str(exc)) < 40  # a short, stable reason
            continue
        assert values, "a parser returned no values without an error"
        for key, value in values.items():
            assert isinstance(key, str)
            assert isinstance(value, float) and math.isfinite(value)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_text(line: str) -> None:
    check_contract(line)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes(data: bytes) -> None:
    check_contract(data.decode("utf-8", errors="replace"))
    check_contract(data.decode("latin-1"))


NUMBERISH = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
    st.sampled_from(["", " ", "-", "1e", ".", "0x1", "1_0", "١٢", "NaN", "-inf"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(NUMBERISH, max_size=5), st.sampled_from([",", ";", " ", ":", "="]))
def test_fuzz_delimited_numbers(parts: list[str], sep: str) -> None:
    check_contract(sep.join(parts))
    check_contract(" ".join(f"k{i}{sep}{p}" for i, p in enumerate(parts)))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["GP", "GN", "GL", "XX", ""]),
    st.sampled_from(["GGA", "RMC", "GSV", "GG"]),
    st.lists(st.one_of(NUMBERISH, st.sampled_from(["N", "S", "E", "W", "A", "V", "M"])), max_size=16),
    st.booleans(),
)
def test_fuzz_nmea_shaped(talker: str, kind: str, fields: list[str], good_checksum: bool) -> None:
    body = ",".join([talker + kind, *fields])
    line = nmea(body) if good_checksum else f"${body}*00"
    check_contract(line)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_fuzz_json_documents(value: Any) -> None:
    check_contract(json.dumps(value))
