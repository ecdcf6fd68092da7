"""What a subscriber may see of the device's at-least-once delivery, checked on raw arrivals."""

from __future__ import annotations

from collections.abc import Sequence

from devkit.mqtt_types import Received


def assert_drained_in_order(arrivals: Sequence[Received], last: int) -> int:
    """Check the order the README promises on the raw arrival sequence of one pipeline's results
    at one subscriber (nothing sorted or de-duplicated): the *first* arrivals of the ``seq`` values
    are exactly 1, 2, ..., ``last``, in that order (no gap, nothing out of turn); every other
    arrival repeats a ``seq`` already received, with the same payload (at-least-once redelivery of
    what was in flight at a reconnect). Returns how many arrivals were such repeats."""
    first: dict[int, bytes] = {}
    order: list[int] = []
    repeats = 0
    for message in arrivals:
        seq = int(message.json()["seq"])
        if seq in first:
            assert message.payload == first[seq], f"seq {seq} redelivered with a different payload"
            repeats += 1
            continue
        first[seq] = message.payload
        order.append(seq)
    out_of_turn = [(i, s) for i, s in enumerate(order, 1) if s != i]
    assert not out_of_turn, f"first arrivals out of order or with a gap (position, seq): {out_of_turn[:10]}"
    assert len(order) == last, f"{len(order)} distinct seq values arrived, expected 1..{last}"
    return repeats
