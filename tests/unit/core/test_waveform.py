"""The one packing of raw waveforms (civic_iot.storage.waveform): round trips, the format
as documented (so a reader outside Python can decode it), and what it refuses."""

from __future__ import annotations

import base64
import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from civic_iot.storage.waveform import (
    MAX_ABS,
    WaveformError,
    pack,
    pack_rows,
    peak,
    peaks,
    stored,
    unpack,
)

#: What the payload contract admits: 1 to 1,000 samples of -4,000 to 4,000 gal.
contract_samples = st.lists(
    st.floats(min_value=-4000, max_value=4000, allow_nan=False), min_size=1, max_size=1000
)
#: Anything a float32 holds.
float32_samples = st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False))


def test_the_format_is_float32_little_endian_in_base64() -> None:
    text = pack([1.0, -2.5, 980.25])
    assert text == base64.b64encode(struct.pack("<3f", 1.0, -2.5, 980.25)).decode()
    # ... as numpy (or any reader) decodes it.
    decoded = np.frombuffer(base64.b64decode(text), dtype="<f4")
    assert decoded.tolist() == [1.0, -2.5, 980.25]
    assert len(pack([0.0] * 300)) == 1600  # 5.3 characters a sample


def test_no_samples_pack_to_an_empty_string() -> None:
    assert pack([]) == ""
    assert unpack("") == []
    assert peak([]) == 0.0


@given(float32_samples)
def test_float32_values_come_back_exactly(xs: list[float]) -> None:
    assert unpack(pack(xs)) == xs


@given(contract_samples)
def test_contract_samples_come_back_as_their_nearest_float32(xs: list[float]) -> None:
    back = unpack(pack(xs))
    assert back == stored(xs)
    assert len(back) == len(xs)
    for sent, got in zip(xs, back, strict=True):
        # Round to nearest: half a float32 step at most (relative 2**-24; absolute below
        # the smallest normal float32, 2**-126).
        assert abs(got - sent) <= max(abs(sent) * 2.0**-24, 2.0**-150)


@given(contract_samples)
def test_the_peak_is_the_largest_absolute_sample_as_sent(xs: list[float]) -> None:
    assert peak(xs) == max(abs(x) for x in xs)
    assert peak(xs) >= 0.0


def test_two_decimals_read_back_as_they_were_written() -> None:
    """What a device sends (simulator: 2 decimals) prints the same after the round trip
    at float32's precision (7 significant digits)."""
    xs = [0.12, -3999.99, 0.01, 123.45, -0.07]
    assert [float(f"{x:.7g}") for x in unpack(pack(xs))] == xs


def test_huge_and_tiny_values() -> None:
    assert unpack(pack([MAX_ABS, -MAX_ABS])) == [MAX_ABS, -MAX_ABS]
    # Below float32's range: the nearest float32 (subnormal, then zero); never an error.
    assert unpack(pack([1e-40, -1e-50, 5e-324])) == [stored([1e-40])[0], -0.0, 0.0]


@pytest.mark.parametrize(
    ("samples", "bad"),
    [
        ([0.0, math.nan], 1),
        ([math.inf, 0.0], 0),
        ([0.0, 0.0, -math.inf], 2),
        ([1e39], 0),  # finite in Python, infinite as a float32
        ([-MAX_ABS * 1.01, 1.0], 0),
    ],
)
def test_what_a_float32_cannot_hold_is_refused(samples: list[float], bad: int) -> None:
    with pytest.raises(WaveformError, match=f"sample {bad} is not a finite float32"):
        pack(samples)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not base64!", "not base64"),
        ("AAAAAA=", "not base64"),  # wrong padding
        ("AAAAAAA=", "not whole float32 values"),  # 5 bytes
        ("AAAA\nAAAA", "not base64"),
    ],
)
def test_text_that_is_no_packing_is_refused(text: str, why: str) -> None:
    with pytest.raises(WaveformError, match=why):
        unpack(text)


@given(st.integers(1, 4), st.data())
def test_rows_pack_as_each_row_alone(n_rows: int, data: st.DataObject) -> None:
    """pack_rows and peaks (numpy, a packet's components at once) give exactly what
    pack and peak give each component's list."""
    n = data.draw(st.integers(0, 300))
    rows = [
        data.draw(st.lists(st.floats(-4000, 4000, allow_nan=False), min_size=n, max_size=n))
        for _ in range(n_rows)
    ]
    arr = np.array(rows, dtype=np.float64).reshape(n_rows, n)
    assert pack_rows(arr) == [pack(r) for r in rows]
    assert peaks(arr) == [peak(r) for r in rows]
    # A view (the detector's columns, transposed back) packs the same.
    assert pack_rows(np.ascontiguousarray(arr.T).T) == [pack(r) for r in rows]


@pytest.mark.parametrize(
    ("rows", "where"),
    [
        ([[0.0, 1.0], [2.0, math.nan]], "row 1: sample 1"),
        ([[math.inf, 0.0], [0.0, 0.0]], "row 0: sample 0"),
        ([[0.0, 1e39], [0.0, 0.0]], "row 0: sample 1"),
    ],
)
def test_rows_refuse_what_a_float32_cannot_hold(rows: list[list[float]], where: str) -> None:
    with pytest.raises(WaveformError, match=f"{where} is not a finite float32"):
        pack_rows(np.array(rows))
