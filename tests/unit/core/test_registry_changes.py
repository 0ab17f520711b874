"""Adding and removing devices: a batch is checked whole, every bad row named (no I/O
but a temporary folder for the file round trip)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from civic_iot.accounts import SERVICE_ACL
from civic_iot.registry import (
    Device,
    Registry,
    RegistryError,
    Township,
    add_devices,
    device_secret,
    load_registry,
    remove_devices,
    save_registry,
)

TOWN = Township(code="63000010", name="Songshan", lat=25.05, lon=121.558)
BASE = Registry(
    townships=(TOWN,),
    devices=(Device(id="air-0001", kind="air", lat=25.04, lon=121.55, township="63000010"),),
)


def row(device_id: Any, **over: Any) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "air",
        "lat": 25.0,
        "lon": 121.5,
        "township": "63000010",
    } | over


def test_a_good_batch_is_added_in_order() -> None:
    new = add_devices(BASE, [("line 2", row("n-1")), ("line 3", row("n-2", kind="water"))])
    assert [d.id for d in new] == ["air-0001", "n-1", "n-2"]
    assert new.get("n-2") is not None
    assert new.get("n-2").kind == "water"  # type: ignore[union-attr]
    assert len(BASE) == 1  # the registry given is left as it was


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (row("air-0001"), "line 9 (id 'air-0001'): already registered"),
        (row("civic-ingest"), "the id is an MQTT service account"),
        (row("a/b"), "not a valid device id"),
        (row("a+b"), "not a valid device id"),
        (row("#"), "not a valid device id"),
        (row("a:b"), "not a valid device id"),
        (row("a b"), "not a valid device id"),
        (row("$SYS"), "not a valid device id"),
        (row("x" * 65), "not a valid device id"),
        (row(""), "line 9: no id"),
        (row(7), "not a valid device id"),
        (row("n-9", township="99"), "unknown township '99'"),
        (row("n-9", lat=91), "lat: Input should be less than or equal to 90"),
        (row("n-9", kind="volcano"), "kind: Input should be"),
        (row("n-9", townshp="63000010"), "unknown fields ['townshp']"),
    ],
)
def test_each_bad_row_is_named(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError) as err:
        add_devices(BASE, [("line 2", row("ok-1")), ("line 9", bad)])
    assert any(message in p for p in err.value.problems), err.value.problems
    assert not any("line 2" in p for p in err.value.problems)


def test_every_bad_row_of_a_batch_is_listed_and_nothing_added() -> None:
    rows = [
        ("line 2", row("ok-1")),
        ("line 3", row("air-0001")),
        ("line 4", row("civic-alerts")),
        ("line 5", row("ok-1")),
        ("line 6", row("bad/id", township="00")),
    ]
    with pytest.raises(RegistryError) as err:
        add_devices(BASE, rows)
    assert str(err.value).startswith("4 of 5 device row(s) refused, nothing added")
    assert err.value.problems == [
        "line 3 (id 'air-0001'): already registered",
        "line 4 (id 'civic-alerts'): the id is an MQTT service account (civic_iot.accounts)",
        "line 5 (id 'ok-1'): repeats the id of line 2",
        "line 6 (id 'bad/id'): not a valid device id: 1-64 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit (it is the device's MQTT user name and a topic level)",
        "line 6 (id 'bad/id'): unknown township '00'",
    ]


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(RegistryError, match="no devices given"):
        add_devices(BASE, [])


@pytest.mark.parametrize("account", sorted(SERVICE_ACL))
def test_a_registry_refuses_a_service_account_as_device(account: str) -> None:
    device = Device(id=account, kind="air", lat=25.0, lon=121.5, township="63000010")
    with pytest.raises(ValueError, match=rf"device ids \['{account}'\] are MQTT service accounts"):
        Registry(townships=(TOWN,), devices=(device,))


def test_remove_names_every_unknown_id_and_keeps_the_rest() -> None:
    grown = add_devices(BASE, [("a", row("n-1")), ("b", row("n-2"))])
    assert [d.id for d in remove_devices(grown, ["n-1", "n-1"])] == ["air-0001", "n-2"]
    with pytest.raises(RegistryError) as err:
        remove_devices(grown, ["n-1", "nope", "gone"])
    assert err.value.problems == [
        "'nope' is not a registered device",
        "'gone' is not a registered device",
    ]
    with pytest.raises(RegistryError, match="no device ids given"):
        remove_devices(grown, [])


def test_save_keeps_header_and_mode_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("# generated; do not edit\n# second line\ntownships: []\ndevices: []\n")
    path.chmod(0o644)
    grown = add_devices(BASE, [("a", row("n-1"))])
    save_registry(grown, path)
    text = path.read_text()
    assert text.startswith("# generated; do not edit\n# second line\ntownships:\n")
    # One entry a line, so a change of one device is one line of a diff.
    assert "- {id: n-1, kind: air, lat: 25.0, lon: 121.5, township: '63000010'" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load_registry(path) == grown
    assert [p.name for p in tmp_path.iterdir()] == ["devices.yaml"]  # no temp file left


def test_device_secret_is_private_from_the_start_and_kept(tmp_path: Path) -> None:
    first = device_secret(tmp_path)
    path = tmp_path / "secrets" / "device-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64
    assert device_secret(tmp_path) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["device-secret"]
