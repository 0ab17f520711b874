"""The packing of raw waveforms for storage: one string per component of a packet.

A seismic packet (``civic_iot.contracts.readings.SeismicPayload``: up to 1,000 samples
per component, each -4,000 to 4,000 gal) is stored as ONE ``seismic_packet`` point
(``docs/storage.md``); each component's samples travel in one string field, packed here
and nowhere else: the processors write with :func:`pack`, readers (tests, benchmarks,
anyone querying the ``seismic`` bucket) read with :func:`unpack`.

The format (:data:`ENCODING`): the samples as IEEE 754 binary32 (float32), little-endian,
4 bytes each, in order, then standard base64 with padding (RFC 4648): ``4 * ceil(4n / 3)``
characters for ``n`` samples, 5.3 a sample. Empty samples pack to ``""``.

Why float32 (docs/storage.md, "Raw waveforms", has the measurements): its 24-bit
significand resolves 2**-12 gal (0.00024 gal) at the contract's 4,000 gal and finer
below, finer than a 24-bit ADC spread over that range (0.00048 gal) and far finer than a
MEMS accelerometer's noise; it packs in about a seventh of the Python time of decimal
text (the seismic worker's CPU is what Taiwan's scale runs short of), for about half as
much again on disk. A sample reads back as the float32 nearest to what was sent
(relative error at most 2**-24); :func:`stored` gives that value.
"""

from __future__ import annotations

import array
import base64
import binascii
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ENCODING",
    "MAX_ABS",
    "WaveformError",
    "pack",
    "pack_rows",
    "peak",
    "peaks",
    "stored",
    "unpack",
]

#: What :func:`pack` writes, for the docs and anyone decoding outside Python.
ENCODING = "float32 little-endian, base64 (RFC 4648, padded)"

#: The largest magnitude a float32 holds (beyond it a sample would become infinite).
MAX_ABS = 3.4028234663852886e38

_BIG_ENDIAN = sys.byteorder == "big"


class WaveformError(ValueError):
    """Samples that cannot be packed (not finite, too large) or text that is no packing."""


def pack(samples: Iterable[float]) -> str:
    """The packed form of one component's samples (gal), in order.

    Raises :class:`WaveformError` for a sample that is NaN, infinite or beyond
    :data:`MAX_ABS` (the payload contract admits none: samples are -4,000 to 4,000 gal).
    """
    values = array.array("f", samples)
    # One sum over the float32 values finds them all: NaN and infinity propagate, a
    # float64 beyond MAX_ABS became infinity when cast, and a float64 sum of float32
    # values does not overflow.
    if not math.isfinite(sum(values)):
        bad = next(i for i, x in enumerate(values) if not math.isfinite(x))
        msg = f"sample {bad} is not a finite float32 (|x| <= {MAX_ABS:.4g}): cannot pack it"
        raise WaveformError(msg)
    if _BIG_ENDIAN:  # pragma: no cover - the format is little-endian everywhere
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def pack_rows(samples: NDArray[Any]) -> list[str]:
    """:func:`pack` of each row of a 2-D array (a packet's components, one a row, gal):
    the same text, and the same :class:`WaveformError`, at a fraction of the cost of
    packing Python lists (one cast and one check for every component)."""
    if samples.ndim != 2:
        msg = f"packed rows: expected a 2-D array of samples, got shape {samples.shape}"
        raise WaveformError(msg)
    # The cast array('f') makes (round to nearest); beyond MAX_ABS it gives infinity,
    # refused below as pack refuses it.
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.ascontiguousarray(samples, dtype="<f4")
    finite = np.isfinite(values)
    if not finite.all():
        row, bad = (int(i[0]) for i in np.nonzero(~finite))
        msg = (
            f"row {row}: sample {bad} is not a finite float32 (|x| <= {MAX_ABS:.4g}): "
            "cannot pack it"
        )
        raise WaveformError(msg)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in values]


def peaks(samples: NDArray[Any]) -> list[float]:
    """:func:`peak` of each row of a 2-D array (gal): its largest absolute sample, 0.0
    for rows without samples."""
    if samples.shape[-1] == 0:
        return [0.0] * samples.shape[0]
    out: list[float] = np.abs(samples).max(axis=-1).tolist()
    return out


def unpack(text: str) -> list[float]:
    """The samples (gal) of one packed component; ``""`` holds none.

    Raises :class:`WaveformError` when ``text`` is not base64 of whole float32 values.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        msg = f"packed samples are not base64 ({len(text)} characters): {e}"
        raise WaveformError(msg) from e
    if len(raw) % 4:
        msg = f"packed samples hold {len(raw)} bytes, not whole float32 values (4 bytes each)"
        raise WaveformError(msg)
    values = array.array("f")
    values.frombytes(raw)
    if _BIG_ENDIAN:  # pragma: no cover
        values.byteswap()
    return values.tolist()


def stored(samples: Iterable[float]) -> list[float]:
    """What :func:`unpack` gives back for ``samples``: each the nearest float32."""
    return array.array("f", samples).tolist()


def peak(samples: Sequence[float]) -> float:
    """The largest absolute sample (gal), from the samples as sent; 0.0 when empty."""
    if not samples:
        return 0.0
    return float(max(*samples, -min(samples)))
