"""Messages between the processors' own agents (internal Kafka topics, named in
:mod:`civic_iot.topology`).

* ``{prefix}processors.township`` (keyed by township code, as many partitions as the
  readings topics): every air and water reading's per-device level, so that the
  township's state lives in one partition whatever device partition it came from; per
  batch of readings one message per partition, a township's :class:`TownshipReports` a
  line, keyed so that each of its townships hashes to that partition.
* ``{prefix}seismic.triggers`` (one partition, one constant key): per batch of seismic
  packets, the station triggers and event-window observations and the stream clock, for
  the network associator that must see every station.
* ``{prefix}processors.shaking`` (keyed by device id, as many partitions as the readings
  topics): from the associator, for every water device of a township an earthquake
  shakes at CWA intensity >= 5-, so that the device's rain gauge judges debris flow
  against R50. Keyed like ``readings.water`` and partitioned alike, the notice lands on
  the worker that holds the device's water state.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from civic_iot.contracts.alerts import Hazard, IntensityLevel

#: The key of every ``seismic.triggers`` message: the associator is one serial point.
NETWORK_KEY = "network"


class TownshipReport(BaseModel):
    """One device's current level for one hazard in its township.

    ``value`` is in ``metric``'s unit (``aqi``, ``flood_depth_cm`` ...); ``threshold`` is
    the line of the device's current level in that unit.
    """

    model_config = ConfigDict(frozen=True)

    township: str
    hazard: Hazard
    device: str
    level: int = Field(ge=0)
    value: float | None
    metric: str
    threshold: float | None = None
    event_time: AwareDatetime
    evidence: dict[str, float | str] = Field(default_factory=dict)


class TownshipReports(BaseModel):
    """The reports of one batch of readings for one township, in reading order."""

    model_config = ConfigDict(frozen=True)

    township: str
    reports: tuple[TownshipReport, ...]


class Trigger(BaseModel):
    """A station's STA/LTA trigger: its P pick, epoch s, and position, degrees.

    ``at_s``: the end of the packet that carried it, epoch s (a pick is placed up to a
    second or so before the crossing that found it, so it may arrive after the network's
    clock has passed its P time); None: the P time.
    """

    model_config = ConfigDict(frozen=True)

    station_id: str
    lat: float
    lon: float
    p_time_s: float
    at_s: float | None = None


class Observation(BaseModel):
    """What a triggered station has seen so far in its event window.

    The window is the one opened by the trigger at ``p_time_s`` (epoch s; None: the
    station's current window, whichever it is). ``pga_gal`` gal and ``pgv_cms`` cm/s are
    its peaks so far. The P-wave features cover the first ``p_window_s`` seconds after P
    (up to the station's Pd window, 3 s): ``pd_cm`` peak vertical displacement, cm, with
    ``pd_snr`` its ratio to the station's displacement noise; ``pv_cms`` peak vertical
    velocity, cm/s; ``pa_gal`` peak vertical acceleration in the trigger band, gal, with
    ``pa_snr`` its ratio to the band's noise before the trigger; ``tau_c_s`` the dominant
    period of Wu & Kanamori (2005), s. ``transient``: the window closed as a transient
    (the signal was gone within seconds: a spike). ``at_s``: the end of the packet, epoch s.
    ``s_time_s``: the S pick of the window opened at ``p_time_s``, epoch s (the
    horizontals' STA over their mean since the trigger; None: none yet, or none to be
    had: a transient window, S - P under about 1 s, an S wave under the P coda).
    """

    model_config = ConfigDict(frozen=True)

    station_id: str
    pga_gal: float
    pgv_cms: float
    p_time_s: float | None = None
    at_s: float | None = None
    pd_cm: float | None = None
    pd_snr: float | None = None
    pv_cms: float | None = None
    pa_gal: float | None = None
    pa_snr: float | None = None
    tau_c_s: float | None = None
    p_window_s: float = 0.0
    transient: bool = False
    s_time_s: float | None = None


class StationStatus(BaseModel):
    """Whether a station could have triggered: the associator uses the stations that did
    NOT trigger as constraints on the location (ShakeAlert/EPIC), so it must know which
    were listening.

    ``until_s``: end of the station's newest packet, epoch s; ``armed_since_s``: its
    detector has been able to trigger continuously since then (None: it cannot now:
    warm-up, an event window, a lockout); ``noise_gal``: RMS of its trigger band, gal;
    position, degrees.
    """

    model_config = ConfigDict(frozen=True)

    station_id: str
    lat: float
    lon: float
    until_s: float
    armed_since_s: float | None = None
    noise_gal: float = 0.0


class SeismicTick(BaseModel):
    """A batch of seismic packets as the associator needs it.

    ``now_s``: end of the newest packet, epoch s (the associator's stream clock);
    ``trigger_record_ms``: Kafka timestamp of the oldest triggering packet (latency);
    ``stations``: the status of every station with a packet in the batch.
    """

    model_config = ConfigDict(frozen=True)

    now_s: float
    triggers: tuple[Trigger, ...] = ()
    observations: tuple[Observation, ...] = ()
    stations: tuple[StationStatus, ...] = ()
    trigger_record_ms: int | None = None
    #: Kafka timestamp of the oldest packet of the tick, ms: the latency of a candidate
    #: this tick decides is counted from it.
    record_ms: int | None = None
    #: The ``readings.seismic`` partition the packets came from: the associator's clock
    #: is the slowest partition's (a watermark), see ``processors.handlers.handle_quake``.
    partition: int | None = None


class StrongShakingNotice(BaseModel):
    """An earthquake's estimated CWA intensity in a township reached the debris-flow
    shaking level: one notice per water device of the township.

    ``intensity`` is the township's highest cell level (``"5-"`` ... ``"7"``);
    ``origin_time`` the earthquake's origin (event time), from which R50 applies.
    """

    model_config = ConfigDict(frozen=True)

    device: str
    township: str
    event_id: str
    intensity: IntensityLevel
    origin_time: AwareDatetime
