"""The device registry: the one source of broker credentials, ACLs and locations.

``deploy/devices.yaml`` lists every field device (OGC SensorThings: a *Thing* with its
*Location*). Mosquitto's password and ACL files are generated from it
(:mod:`deploy.mosquitto` via ``civic-iot devices sync``) and ingest enriches every reading
with the device's location and township from it. Thresholds are not here: per township
and per device they live in the thresholds file (:mod:`civic_iot.thresholds`).

Device passwords are never stored in the repo: each is derived from a per-installation
secret (``<data_dir>/secrets/device-secret``) as ``HMAC-SHA256(secret, device_id)``, so the
broker's password file and the simulator agree without a list of passwords to leak.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

DeviceKind = Literal["air", "water", "seismic"]


class Township(BaseModel):
    """An administrative area that alerts are addressed to."""

    model_config = ConfigDict(frozen=True)

    code: str = Field(min_length=1, description="town code (Taiwan_Geocode_103 style)")
    name: str
    county: str = ""
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)

    @model_validator(mode="before")
    @classmethod
    def _no_thresholds(cls, data: object) -> object:
        return _refuse_moved(data, "township", ("debris_flow_r70_mm", "debris_flow_r50_mm"))


class Device(BaseModel):
    """One field device."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: DeviceKind
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    township: str
    #: e.g. ``pm2_5``, ``flood``, ``river``, ``rain``, ``accelerometer``.
    sensor: str = ""
    elevation_m: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_thresholds(cls, data: object) -> object:
        return _refuse_moved(data, "device", ("thresholds",))


def _refuse_moved(data: object, what: str, names: tuple[str, ...]) -> object:
    """Thresholds live in the thresholds file now; a registry entry still carrying one
    is refused rather than silently ignored."""
    if isinstance(data, Mapping):
        moved = [n for n in names if n in data]
        if moved:
            key = data.get("code") or data.get("id")
            section = "regions" if what == "township" else "devices"
            msg = (
                f"{what} {key}: {', '.join(moved)} moved to the thresholds file "
                f"(deploy/thresholds.yaml, {section}.{key}); remove it from the registry"
            )
            raise ValueError(msg)
    return data


class Registry(BaseModel):
    """All devices and townships of one installation."""

    model_config = ConfigDict(frozen=True)

    townships: tuple[Township, ...] = ()
    devices: tuple[Device, ...] = ()
    _by_id: dict[str, Device] = PrivateAttr(default_factory=dict)
    _towns: dict[str, Township] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context: object) -> None:
        ids = [d.id for d in self.devices]
        if len(ids) != len(set(ids)):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            msg = f"device registry: duplicate device ids {dupes}"
            raise ValueError(msg)
        codes = {t.code for t in self.townships}
        unknown = sorted({d.township for d in self.devices} - codes)
        if self.townships and unknown:
            msg = f"device registry: devices name unknown townships {unknown}"
            raise ValueError(msg)
        self._by_id = {d.id: d for d in self.devices}
        self._towns = {t.code: t for t in self.townships}

    # Private attributes are read through pydantic's ``__getattr__`` (about 2 us); ``get``
    # runs once per reading, so it reads the private dict directly (about 0.1 us).

    def get(self, device_id: str) -> Device | None:
        by_id: dict[str, Device] = self.__pydantic_private__["_by_id"]  # type: ignore[index]
        return by_id.get(device_id)

    def township(self, code: str) -> Township | None:
        towns: dict[str, Township] = self.__pydantic_private__["_towns"]  # type: ignore[index]
        return towns.get(code)

    def __iter__(self) -> Iterator[Device]:  # type: ignore[override]
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def of_kind(self, kind: DeviceKind) -> list[Device]:
        return [d for d in self.devices if d.kind == kind]


def load_registry(path: Path) -> Registry:
    """Read a registry YAML file (``townships:`` and ``devices:`` lists)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return Registry.model_validate(data)


def save_registry(registry: Registry, path: Path) -> None:
    """Write a registry back as YAML (used by ``civic-iot devices add``)."""
    data = registry.model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def device_secret(data_dir: Path) -> bytes:
    """The installation's device secret, created on first use (never in the repo)."""
    path = data_dir / "secrets" / "device-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_hex(32), encoding="ascii")
        path.chmod(0o600)
    return path.read_text(encoding="ascii").strip().encode()


def device_password(secret: bytes, device_id: str) -> str:
    """A device's MQTT password: ``HMAC-SHA256(secret, device_id)`` in hex."""
    return hmac.new(secret, device_id.encode(), hashlib.sha256).hexdigest()


def service_password(data_dir: Path, user: str) -> str:
    """The password of a service account (ingest, alerts, subscribers)."""
    return device_password(device_secret(data_dir), f"service:{user}")
