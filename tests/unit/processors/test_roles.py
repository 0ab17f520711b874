"""A worker's role says which agents and tables it runs: the seismic path (stations and
the earthquake associator) can run in processes and a consumer group of its own."""

from __future__ import annotations

from typing import Any

import pytest
from faust.stores.memory import Store as MemoryStore

from civic_iot.settings import Settings
from civic_iot.thresholds import thresholds_from
from civic_iot.topology import PRODUCER_BATCH_BYTES, STATE_RECORD_MAX_BYTES, Topology
from processors.app import batch_within_s, create_app
from processors.cli import changelog_specs
from tests.unit.processors.recorders import RecordingPublisher, RecordingSink
from tests.unit.processors.test_agents import REGISTRY
from tests.unit.processors.test_faust_adapter import worker_consumer

BULK_TOPICS = {"readings.air", "readings.water", "readings.deadletter"}
SEISMIC_TOPICS = {"readings.seismic"}


def _worker(role: str) -> Any:
    settings = Settings(
        kafka={"topic_prefix": "r."},  # type: ignore[arg-type]
        processors={"web_port": 0, "stats_interval_s": 0, "role": role},  # type: ignore[arg-type]
    )
    return create_app(
        settings,
        registry=REGISTRY,
        thresholds=thresholds_from({}, REGISTRY),
        sink_factory=lambda _name: RecordingSink(),
        publisher=RecordingPublisher(),
    )


def _app(role: str) -> tuple[str, set[str], set[str]]:
    app = _worker(role)
    app.finalize()
    topics = {t.removeprefix("r.") for agent in app.agents.values() for t in agent.channel.topics}
    tables = set(app.tables.keys())
    return app.conf.id, topics, tables


ROLES = ["all", "bulk", "seismic", "stations", "quake"]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_runs_its_agents_and_tables(role: str) -> None:
    app_id, topics, tables = _app(role)
    group = Topology(prefix="r.").processors_app
    bulk = role in ("all", "bulk")
    stations = role in ("all", "seismic", "stations")
    quake = role in ("all", "seismic", "quake")
    assert app_id == {"seismic": f"{group}-seismic", "stations": f"{group}-seismic"}.get(
        role, f"{group}-quake" if role == "quake" else group
    )
    assert (topics >= BULK_TOPICS) is bulk
    assert (topics >= SEISMIC_TOPICS) is stations
    assert ("processors.township" in topics) is bulk
    assert ("seismic.triggers" in topics) is quake
    assert ({"air-state", "water-state", "township-state", "shaking-state"} <= tables) is bulk
    assert ("seismic-state" in tables) is stations
    assert ("quake-state" in tables) is quake
    if role != "all":
        assert not (tables & ({"seismic-state", "quake-state"} if bulk else {"air-state"}))


def test_the_stations_the_associator_and_the_townships_batch_on_their_own_timers() -> None:
    # On the warning path: a packet waits for its agent's batch timer before it is decided.
    # The townships' longer: each batch writes every township state it reached.
    p = Settings(
        processors={
            "batch_within_s": 0.3,
            "seismic_within_s": 0.01,
            "quake_within_s": 0.02,
            "township_within_s": 0.9,
        }  # type: ignore[arg-type]
    ).processors
    waits = {a: batch_within_s(p, a) for a in ("air", "water", "township", "seismic", "quake")}
    assert waits == {"air": 0.3, "water": 0.3, "township": 0.9, "seismic": 0.01, "quake": 0.02}
    assert Settings().processors.township_within_s == 1.0


@pytest.mark.parametrize("role", ROLES)
def test_the_worker_makes_each_tables_changelog_to_take_a_large_state_record(role: str) -> None:
    # Made before Faust starts (a changelog Faust makes itself on a fresh prefix can fail
    # the first table write), and taking the associator's state at Taiwan's 615 stations
    # (1.1 MB, above Kafka's default 1 MB limit: the seismic worker died on it).
    app = _worker(role)
    specs = {s.name: s for s in changelog_specs(app)}
    assert set(specs) == {f"{app.conf.id}-{t}-changelog" for t in app.tables}
    for spec in specs.values():
        assert spec.configs()["cleanup.policy"] == "compact"
        assert int(spec.configs()["max.message.bytes"]) >= 4 * 1024 * 1024
        assert spec.partitions == (1 if spec.name.endswith("quake-state-changelog") else 4)
    assert app.conf.producer_max_request_size == STATE_RECORD_MAX_BYTES
    # A batch's changelog records of one partition fit one record batch (write_changelog).
    assert app.conf.producer_max_batch_size == PRODUCER_BATCH_BYTES >= 1024 * 1024


@pytest.mark.parametrize("role", ["all", "bulk"])
def test_every_table_of_the_worker_is_in_memory_so_its_changelog_goes_straight_out(
    role: str,
) -> None:
    # processors.faust_adapter.write_changelog skips faust's persisted changelog offset,
    # which only a store on disk keeps: with another store it takes faust's own path.
    app = _worker(role)
    app.finalize()
    assert app.tables
    assert all(isinstance(t.data, MemoryStore) for t in app.tables.values())


@pytest.mark.parametrize("role", ROLES)
def test_only_a_bulk_worker_waits_for_its_fetches(role: str) -> None:
    """The seismic path's fetches answer at the first record and never wait long for
    none (the warning's latency); a bulk worker's wait for bytes (its CPU)."""
    app = _worker(role)
    app.finalize()
    consumer = worker_consumer(app)
    waits = (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms)
    p = Settings().processors
    bulk = (p.bulk_fetch_min_bytes, round(p.bulk_fetch_wait_s * 1000))
    warning = (1, round(Settings().kafka.warning_fetch_wait_s * 1000))
    assert waits == (bulk if role == "bulk" else warning)
    assert role == "bulk" or consumer._fetch_max_wait_ms <= 100
