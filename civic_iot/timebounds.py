"""How old and how far ahead of the clock a reading may be: ingest refuses what lies
outside (:class:`ingest.refusals.Limits`), and the processors let nothing outside move
their state (:mod:`processors.guard`). One place for both. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from civic_iot.settings import Settings

#: How much younger than its bucket's retention a reading must be, so that it is still in
#: the bucket's window when the processors write it (a backlog may delay that by minutes).
RETENTION_MARGIN_S = 3600.0

_KINDS = ("air", "water", "seismic")


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """Every sample of a reading must lie in ``[now - max_age_s[kind], now +
    max_future_skew_s]``, seconds; one older than ``lateness_s`` is kept and flagged
    ``late``. ``max_age_s`` is per reading kind, so that no reading is older than its
    InfluxDB bucket keeps data."""

    max_future_skew_s: float = 60.0
    lateness_s: float = 3600.0
    max_age_s: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(_KINDS, 6 * 86_400.0))
    )

    @classmethod
    def of(cls, settings: Settings) -> TimeBounds:
        """The bounds of a deployment: a reading may be as old as ``max_age_s`` (in
        backfill mode, as old as its bucket keeps data), never older than its bucket
        keeps it less an hour (InfluxDB refuses points beyond a bucket's retention)."""
        i = settings.ingest
        keep_days = {
            "air": settings.influx.readings_retention_days,
            "water": settings.influx.readings_retention_days,
            "seismic": settings.influx.seismic_retention_days,
        }
        max_age: dict[str, float] = {}
        for kind, days in keep_days.items():
            bound = days * 86_400.0 - RETENTION_MARGIN_S
            max_age[kind] = bound if i.backfill else min(i.max_age_s, bound)
        return cls(
            max_future_skew_s=i.max_future_skew_s,
            lateness_s=i.lateness_s,
            max_age_s=MappingProxyType(max_age),
        )


__all__ = ["RETENTION_MARGIN_S", "TimeBounds"]
