"""bench/pipeline.py's pure parts: Telegraf's configuration and log, the accounting of
each path and the report (no services)."""

from __future__ import annotations

import tomllib

import pytest

from bench.pipeline import (
    PathResult,
    TelegrafPlan,
    count_flux,
    fifo_latencies_ms,
    pct,
    poll,
    reached,
    readme_row,
    render,
    summary,
    table_rows,
    telegraf_config,
    times_flux,
    wrote_batch,
)


def plan(**kw: object) -> TelegrafPlan:
    base: dict[str, object] = {
        "mqtt_url": "tcp://127.0.0.1:31883",
        "username": "civic-ingest",
        "password": 'p"w\\d',
        "topics": ("devices/air-0001/air", "devices/air-0002/air"),
        "client_id": "bench-telegraf-x",
        "influx_url": "http://127.0.0.1:38086",
        "token": "tok",
        "org": "civic",
        "bucket": "benchx-telegraf",
    }
    return TelegrafPlan(**(base | kw))  # type: ignore[arg-type]


def test_the_write_lines_of_telegrafs_log_are_counted_and_no_other() -> None:
    assert (
        wrote_batch(
            "2026-12-01T18:04:04Z D! [outputs.influxdb_v2] Wrote batch of 1000 metrics in 160.1ms"
        )
        == 1000
    )
    assert wrote_batch("2026-12-01T18:04:04Z D! [outputs.influxdb_v2] Wrote batch of 7 metrics")
    assert wrote_batch("D! [outputs.influxdb_v2] Buffer fullness: 0 / 20000 metrics") == 0
    assert wrote_batch("I! [inputs.mqtt_consumer] Connected [tcp://127.0.0.1:31883]") == 0


def test_telegraf_acknowledges_once_written_only_with_a_persistent_session() -> None:
    # Without a persistent session Telegraf acknowledges on receipt, not once written.
    assert (
        tomllib.loads(telegraf_config(plan()))["inputs"]["mqtt_consumer"][0]["persistent_session"]
        is False
    )
    durable = tomllib.loads(telegraf_config(plan(persistent=True)))
    assert durable["inputs"]["mqtt_consumer"][0]["persistent_session"] is True


def test_telegrafs_configuration_is_qos_1_json_timed_by_ts() -> None:
    conf = tomllib.loads(telegraf_config(plan(batch=5000, flush_s=0.5)))
    mqtt = conf["inputs"]["mqtt_consumer"][0]
    assert mqtt["qos"] == 1
    assert mqtt["client_id"] == "bench-telegraf-x"
    assert mqtt["max_undelivered_messages"] == 10_000
    assert mqtt["topics"] == ["devices/air-0001/air", "devices/air-0002/air"]
    assert mqtt["password"] == 'p"w\\d'  # quoted as TOML, read back as given
    assert (mqtt["data_format"], mqtt["json_time_key"], mqtt["json_time_format"]) == (
        "json",
        "ts",
        "unix_ms",
    )
    assert mqtt["name_override"] == "air"
    out = conf["outputs"]["influxdb_v2"][0]
    assert (out["urls"], out["bucket"], out["organization"]) == (
        ["http://127.0.0.1:38086"],
        "benchx-telegraf",
        "civic",
    )
    agent = conf["agent"]
    assert agent["metric_batch_size"] == 5000
    assert agent["flush_interval"] == "0.5s"
    assert agent["debug"] is True  # the bench reads each write from the debug log
    assert agent["metric_buffer_limit"] >= mqtt["max_undelivered_messages"]


def test_queries_count_one_field_of_air_from_the_runs_start() -> None:
    q = count_flux("b1", 1_700_000_000_123_000_000)
    assert 'from(bucket: "b1")' in q
    assert "range(start: time(v: 1700000000123000000))" in q
    assert 'r._measurement == "air" and r._field == "pm2_5_ugm3"' in q
    assert q.endswith("|> group() |> count()")
    assert times_flux("b1", 5).endswith('|> keep(columns: ["_time"])')


def test_reached_is_the_first_step_at_or_over_the_count() -> None:
    steps = [(1.0, 10), (2.0, 50), (3.0, 100)]
    assert reached(steps, 50) == 2.0
    assert reached(steps, 51) == 3.0
    assert reached(steps, 101) is None
    assert reached([], 1) is None


def test_latency_maps_the_kth_sent_to_the_kth_stored() -> None:
    sent = [3000.0, 0.0, 2000.0, 1000.0, 9000.0]  # epoch ms, any order
    steps = [(1.5, 2), (3.5, 4)]  # epoch s, stored so far
    # 0 and 1000 stored at 1.5 s, 2000 and 3000 at 3.5 s; 9000 never (left out).
    assert fifo_latencies_ms(sent, steps) == [1500.0, 500.0, 1500.0, 500.0]
    assert fifo_latencies_ms(sent, []) == []


def test_pct_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 0.5) == 50.0
    assert pct(values, 0.99) == 99.0
    assert pct(values, 1.0) == 100.0
    assert pct([], 0.5) is None


def result(name: str, stored: int, wall: float, cpu: dict[str, float], own: tuple[str, ...],
           acknowledged: int = 10_000) -> PathResult:  # fmt: skip
    return PathResult(
        name=name,
        acknowledged=acknowledged,
        stored=stored,
        t0=100.0,
        t_done=100.0 + wall,
        cpu_s=cpu,
        own=own,
        lat_ms=[10.0, 20.0, 30.0],
        publishers_cpu_s=0.2,
        load_start="1.00 2.00 3.00 on 2 CPUs",
        load_end="4.00 5.00 6.00 on 2 CPUs",
    )


def three(durable: bool = False) -> list[PathResult]:
    extra = (
        [
            result(
                "telegraf-durable",
                10_000,
                2.0,
                {"mosquitto": 0.1, "telegraf": 0.5, "influxdb": 0.3},
                ("telegraf",),
            )
        ]
        if durable
        else []
    )
    return [
        result("ceiling", 10_000, 0.5, {"mosquitto": 0.1, "subscriber": 0.05}, ("subscriber",)),
        result(
            "telegraf",
            10_000,
            1.0,
            {"mosquitto": 0.1, "telegraf": 0.4, "influxdb": 0.3},
            ("telegraf",),
        ),
        result(
            "civic",
            9_990,
            4.0,
            {"mosquitto": 0.1, "ingest": 0.4, "worker (bulk)": 3.0, "kafka": 1.0},
            ("ingest", "worker (bulk)"),
        ),
        *extra,
    ]


def test_a_path_is_accounted_by_what_it_stored() -> None:
    civic = three()[2]
    assert civic.rate == pytest.approx(9_990 / 4.0)
    assert civic.lost == 10
    assert civic.cpu_us() == pytest.approx(4.5 / 9_990 * 1e6)
    assert civic.cpu_us(civic.own) == pytest.approx(3.4 / 9_990 * 1e6)
    undone = result("civic", 5, 1.0, {}, ())
    undone.t_done = None
    assert undone.rate == 0.0
    assert result("civic", 0, 1.0, {"x": 1.0}, ()).cpu_us() is None


def test_summary_holds_each_path_to_the_ceiling_and_telegraf() -> None:
    s = summary(three())["paths"]
    assert s["ceiling"]["ratio_to_ceiling"] == pytest.approx(1.0)
    assert s["telegraf"]["ratio_to_ceiling"] == pytest.approx(0.5)
    assert s["civic"]["ratio_to_ceiling"] == pytest.approx(9_990 / 4.0 / 20_000)
    assert s["civic"]["cpu_x_telegraf_path"] == pytest.approx((4.5 / 9_990) / (0.8 / 10_000))
    assert s["civic"]["cpu_x_telegraf_own"] == pytest.approx((3.4 / 9_990) / (0.4 / 10_000))
    assert "cpu_x_telegraf_path" not in s["ceiling"]
    assert "cpu_x_telegraf_path" not in s["telegraf"]
    durable = summary(three(durable=True))["paths"]["telegraf-durable"]
    assert durable["cpu_x_telegraf_own"] == pytest.approx(0.5 / 0.4)
    assert s["civic"]["lat_p50_ms"] == 20.0
    assert "lat_ms" not in s["civic"]  # the JSON keeps quantiles, not every reading


def test_without_a_ceiling_there_is_no_ratio() -> None:
    s = summary(three()[1:])["paths"]
    assert s["telegraf"]["ratio_to_ceiling"] is None


def test_the_table_has_a_cell_per_path_and_a_row_per_process() -> None:
    rows = table_rows(summary(three()))
    labels = [label for label, _ in rows]
    assert all(len(cells) == 3 for _, cells in rows)
    assert "  CPU us/reading: worker (bulk)" in labels
    # The path's own processes first, then the brokers.
    assert labels.index("  CPU us/reading: worker (bulk)") < labels.index(
        "  CPU us/reading: mosquitto"
    )
    cells = dict(rows)
    assert cells["lost"] == ["0", "0", "10"]
    assert cells["ratio to the ceiling"] == ["1.00", "0.50", "0.12"]
    assert cells["  CPU us/reading: telegraf"] == ["-", "40.0", "-"]
    text = render(rows, ["ceiling", "telegraf", "civic"])
    lines = text.splitlines()
    assert len(lines) == len(rows) + 1
    assert len({len(line) for line in lines}) == 1  # aligned


def test_the_readme_row_names_both_peers_and_the_ceiling() -> None:
    row = readme_row(summary(three()), 10_000)
    assert row.startswith("| ")
    assert row.endswith("| `bench/pipeline.py` |")
    assert row.count(" | ") == 3  # path, latest figures, run, benchmark
    assert "2,498 readings/s stored, 0.12 of the QoS 1 ceiling (20,000/s)" in row
    assert "acknowledged on receipt) 10,000/s, 0.50 of the ceiling" in row
    assert "lost 10" in row
    assert "persistent session" not in row
    assert "publishers flat out" in row
    assert "offered at 1,000/s" in readme_row(summary(three()), 10_000, 1000.0)
    durable = readme_row(summary(three(durable=True)), 10_000)
    assert "Telegraf acknowledging once written (persistent session) 5,000/s, 0.25" in durable
    assert durable.count(" | ") == 3


def test_poll_keeps_each_count_until_it_reaches_n_or_gives_up() -> None:
    counts = iter([0, 5, 10, 99])
    steps, why = poll(lambda: next(counts), 10, interval_s=0, stall_s=60, timeout_s=60)
    assert why is None
    assert [c for _, c in steps] == [0, 5, 10]
    assert [t for t, _ in steps] == sorted(t for t, _ in steps)

    steps, why = poll(lambda: 3, 10, interval_s=0, stall_s=0, timeout_s=60)
    assert why is not None
    assert why.startswith("stalled at 3 of 10")

    # Done by another sign (Telegraf's log) before the count says so.
    steps, why = poll(lambda: 0, 10, interval_s=60, stall_s=60, timeout_s=60, done=lambda: True)
    assert why is None
    assert len(steps) == 1
