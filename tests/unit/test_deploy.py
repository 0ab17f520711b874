"""The native stack and docker-compose describe the same system (no services needed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from civic_iot.accounts import SERVICE_ACL
from civic_iot.registry import Device, Registry, Township, device_password
from civic_iot.settings import Settings
from ops.broker import mosquitto_hash, render

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, dict[str, dict[str, object]]]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_mounts_files_that_exist() -> None:
    for name, svc in _compose()["services"].items():
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name} mounts missing {src}"


def test_compose_env_vars_are_settings() -> None:
    fields = {f"CIVIC_{name.upper()}": info for name, info in Settings.model_fields.items()}
    text = (REPO / "docker-compose.yml").read_text()
    for var in set(re.findall(r"\b(CIVIC_[A-Z_]+)\b", text)) - {"CIVIC_INFLUX_ADMIN_PASSWORD"}:
        top = var.split("__")[0]
        assert top in fields, f"{var} is not a civic-iot setting"
        if "__" in var:
            group = Settings.model_fields[top.removeprefix("CIVIC_").lower()].annotation
            assert var.split("__")[1].lower() in group.model_fields, var  # type: ignore[union-attr]


def test_compose_uses_the_native_ports() -> None:
    s = Settings()
    ports = {name: svc.get("ports", []) for name, svc in _compose()["services"].items()}
    assert f"{s.mqtt.port}:1883" in ports["mosquitto"]
    assert f"{s.kafka.bootstrap.split(':')[1]}:9092" in ports["kafka"]
    assert "8086:8086" in ports["influxdb"]
    assert s.influx.url.endswith(":8086")


def test_mosquitto_config_is_locked_down_and_persistent() -> None:
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert "persistence true" in conf
    assert any(line.startswith("autosave_interval ") for line in conf)
    assert not any(line.startswith("listener") for line in conf)  # added per environment


def test_kafka_is_single_node_kraft() -> None:
    props = dict(
        line.split("=", 1)
        for line in (REPO / "deploy/kafka/server.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["offsets.topic.replication.factor"] == "1"
    assert "zookeeper.connect" not in props


def test_acl_gives_each_device_only_its_own_topic() -> None:
    reg = Registry(
        townships=(Township(code="1", name="t", lat=25, lon=121),),
        devices=(
            Device(id="air-1", kind="air", lat=25, lon=121, township="1"),
            Device(id="water-1", kind="water", lat=25, lon=121, township="1"),
        ),
    )
    files = render(reg, b"secret")
    blocks = [
        b.strip().splitlines() for b in files.acl.split("\n\n") if b.strip().startswith("user")
    ]
    rules = {b[0].removeprefix("user "): b[1:] for b in blocks}
    assert rules["air-1"] == ["topic write devices/air-1/#"]
    assert rules["water-1"] == ["topic write devices/water-1/#"]
    assert rules["civic-subscriber"] == ["topic read alerts/#", "topic read runs/+/alerts/#"]
    assert set(SERVICE_ACL) <= set(rules)
    users = [line.split(":")[0] for line in files.passwd.splitlines()]
    assert sorted(users) == sorted(["air-1", "water-1", *SERVICE_ACL])
    # Passwords are derived per device, never equal across devices.
    assert device_password(b"secret", "air-1") != device_password(b"secret", "water-1")


def test_mosquitto_hash_format() -> None:
    # $7$ = PBKDF2-HMAC-SHA512; checked against a real broker in tests/integration/test_stack.py.
    h = mosquitto_hash("pw", salt=b"\x00" * 12)
    assert h.startswith("$7$101$AAAAAAAAAAAAAAAA$")
    assert len(h.split("$")[-1]) == 88  # 64 bytes in base64
