"""Devices files read as rows, broker files that keep unchanged hashes, and the guard on
deleting topics by prefix (no services)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from civic_iot.registry import Device, Registry, Township, add_devices, device_password
from ops import broker
from ops.cli import delete_refusal
from ops.devices import DeviceFileError, add, file_format, parse_device_rows, remove

TOWN = Township(code="63000010", name="Songshan", lat=25.05, lon=121.558)
SECRET = b"0" * 64


def registry(*ids: str) -> Registry:
    return Registry(
        townships=(TOWN,),
        devices=tuple(
            Device(id=i, kind="air", lat=25.0, lon=121.5, township="63000010") for i in ids
        ),
    )


def test_csv_rows_name_their_lines_and_leave_empty_cells_unset() -> None:
    text = (
        "id,kind,lat,lon,township,sensor\n"
        "n-1,air,25.0,121.5,63000010,\n"
        "\n"
        "n-2,water,25,121,63000010,rain\n"
    )
    rows = parse_device_rows(text, "csv")
    assert rows == [
        (
            "line 2",
            {"id": "n-1", "kind": "air", "lat": "25.0", "lon": "121.5", "township": "63000010"},
        ),
        (
            "line 4",
            {
                "id": "n-2",
                "kind": "water",
                "lat": "25",
                "lon": "121",
                "township": "63000010",
                "sensor": "rain",
            },
        ),
    ]
    # Strings from CSV become numbers where the registry wants them.
    assert [d.lat for d in add_devices(registry(), rows)] == [25.0, 25.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,kind,colour\nn-1,air,red\n", "columns ['colour'] unknown"),
        ("id,kind\nn-1,air,extra\n", "line 2: more cells than the header has"),
        ("", "columns [] unknown"),
    ],
)
def test_bad_csv_is_refused(text: str, message: str) -> None:
    with pytest.raises(DeviceFileError, match=re.escape(message)):
        parse_device_rows(text, "csv")


def test_json_lines_and_yaml_rows() -> None:
    jsonl = '{"id": "n-1", "kind": "air"}\n\n{"id": "n-2"}\n'
    assert parse_device_rows(jsonl, "jsonl") == [
        ("line 1", {"id": "n-1", "kind": "air"}),
        ("line 3", {"id": "n-2"}),
    ]
    with pytest.raises(DeviceFileError) as err:
        parse_device_rows('{"id": 1}\nnot json\n[1]\n', "jsonl")
    assert [p.split(":")[0] for p in err.value.problems] == ["line 2", "line 3"]
    listed = parse_device_rows("- {id: n-1}\n- {id: n-2}\n", "yaml")
    assert listed == [("item 1", {"id": "n-1"}), ("item 2", {"id": "n-2"})]
    assert parse_device_rows("devices:\n- {id: n-1}\n", "yaml") == [("item 1", {"id": "n-1"})]
    with pytest.raises(DeviceFileError, match="item 2: a mapping"):
        parse_device_rows("- {id: n-1}\n- n-2\n", "yaml")
    with pytest.raises(DeviceFileError, match="expected a list"):
        parse_device_rows("id: n-1\n", "yaml")


def test_file_format_from_the_name() -> None:
    assert [file_format(Path(n)) for n in ("a.yaml", "a.YML", "a.csv", "a.jsonl")] == [
        "yaml",
        "yaml",
        "csv",
        "jsonl",
    ]
    with pytest.raises(ValueError, match=r"use \.yaml, \.csv or \.jsonl"):
        file_format(Path("a.txt"))


def test_render_keeps_the_hash_of_every_unchanged_user() -> None:
    first = broker.render(registry("a-1", "a-2"), SECRET)
    assert set(first.hashed) == {"civic-ingest", "civic-alerts", "civic-subscriber", "a-1", "a-2"}
    current = broker.parse_passwd(first.passwd)
    second = broker.render(registry("a-1", "a-3"), SECRET, current)
    assert second.hashed == ("a-3",)
    lines = broker.parse_passwd(second.passwd)
    assert lines["a-1"] == current["a-1"]
    assert lines["civic-ingest"] == current["civic-ingest"]
    assert "a-2" not in lines
    assert "user a-2" not in second.acl
    assert "user a-3\ntopic write devices/a-3/#" in second.acl
    assert broker.hash_matches(device_password(SECRET, "a-3"), lines["a-3"])
    assert not broker.hash_matches(device_password(SECRET, "a-1"), lines["a-3"])


def test_render_hashes_everything_again_under_another_secret() -> None:
    current = broker.parse_passwd(broker.render(registry("a-1"), SECRET).passwd)
    other = b"1" * 64
    again = broker.render(registry("a-1"), other, current)
    assert "a-1" in again.hashed
    assert broker.hash_matches(
        device_password(other, "a-1"), broker.parse_passwd(again.passwd)["a-1"]
    )


def test_hash_is_what_mosquitto_reads() -> None:
    h = broker.mosquitto_hash("pw", salt=b"\x00" * 12)
    assert h.startswith("$7$101$AAAAAAAAAAAAAAAA$")
    assert broker.hash_matches("pw", h)
    assert not broker.hash_matches("pw", "$6$x$y")
    assert not broker.hash_matches("pw", "$7$101$not base64!$x")


def test_add_and_remove_write_private_files_and_find_no_broker(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        "townships:\n- {code: '63000010', name: S, lat: 25.05, lon: 121.558}\ndevices: []\n"
    )
    data = tmp_path / "data"
    change = add(
        path,
        data,
        [("line 1", {"id": "n-1", "kind": "air", "lat": 25, "lon": 121, "township": "63000010"})],
    )
    assert change.devices == ("n-1",)
    assert change.reloaded_pid is None  # no broker runs for this data dir
    for f in ("mosquitto/passwd", "mosquitto/acl", "secrets/mqtt-civic-ingest"):
        assert stat.S_IMODE((data / f).stat().st_mode) == 0o600, f
    assert "n-1:" in (data / "mosquitto" / "passwd").read_text()
    dry = add(
        path,
        data,
        [("x", {"id": "n-2", "kind": "air", "lat": 25, "lon": 121, "township": "63000010"})],
        dry_run=True,
    )
    assert dry.devices == ("n-2",)
    assert "n-2" not in path.read_text()
    assert remove(path, data, ["n-1"]).registry_size == 0
    assert "n-1" not in (data / "mosquitto" / "passwd").read_text()


def test_a_stale_pid_file_is_not_signalled(tmp_path: Path) -> None:
    pid_file = tmp_path / "mosquitto" / "mosquitto.pid"
    pid_file.parent.mkdir()
    pid_file.write_text("999999999")
    assert broker.broker_pid(tmp_path) is None
    # A live process that is not Mosquitto (this test) is never sent SIGHUP.
    pid_file.write_text(str(os.getpid()))
    assert broker.broker_pid(tmp_path) is None
    assert broker.reload(tmp_path) is None


@pytest.mark.parametrize(
    ("prefix", "refused"),
    [
        ("", True),
        ("a", True),  # would take alerts, alerts.candidates ...
        ("alerts", True),
        ("readings.", True),
        ("civic-", True),  # civic-processors-*-changelog
        ("demo20260101.", False),
        ("t-abc-", False),
    ],
)
def test_topics_delete_refuses_prefixes_that_reach_production(prefix: str, refused: bool) -> None:
    assert (delete_refusal(prefix) is not None) == refused
