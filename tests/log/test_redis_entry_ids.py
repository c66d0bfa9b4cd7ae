from __future__ import annotations

import pytest

from tastemaker.log import LogError
from tastemaker.log.redis_streams import entry_id, offset_of, offsets_of


def test_offsets_of_many_ids_equal_offset_of_each_and_round_trip() -> None:
    ids: list[bytes | str] = [
        b"0-0",
        b"1-0",
        b"1763928000123-0",
        b"1763928000123-7",
        "1763928000999-1048575",
    ]
    assert offsets_of(ids) == [offset_of(i) for i in ids]
    assert [entry_id(o) for o in offsets_of(ids)] == [
        i.decode() if isinstance(i, bytes) else i for i in ids
    ]
    assert offsets_of([]) == []


def test_an_entry_id_whose_sequence_does_not_fit_is_refused_by_name() -> None:
    with pytest.raises(LogError, match="1763928000123-1048576"):
        offsets_of([b"1-0", b"1763928000123-1048576"])
    for malformed in ([b"12", b"1-2"], [b"1-x"], [b"1--2"], [b"1-2-3"], [b"1-2 3"]):
        with pytest.raises(LogError, match="malformed"):
            offsets_of(malformed)
    with pytest.raises(LogError, match="malformed"):  # beyond a 64-bit offset
        offsets_of([b"99999999999999999999-1"])
