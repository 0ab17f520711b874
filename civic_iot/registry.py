"""The device registry: the one source of broker credentials, ACLs and locations.

``deploy/devices.yaml`` lists every field device (OGC SensorThings: a *Thing* with its
*Location*). Mosquitto's password and ACL files are generated from it
(:mod:`ops.broker` via ``civic-iot devices sync``) and ingest enriches every reading
with the device's location and township from it. ``civic-iot devices add|remove`` change
it through :func:`add_devices` and :func:`remove_devices`, which check a whole batch and
name every bad row, and :func:`save_registry`, which replaces the file atomically (ingest
reloads it when its mtime changes, so it must never see half a file). Thresholds are not
here: per township and per device they live in the thresholds file
(:mod:`civic_iot.thresholds`).

Device passwords are never stored in the repo: each is derived from a per-installation
secret (``<data_dir>/secrets/device-secret``) as ``HMAC-SHA256(secret, device_id)``, so the
broker's password file and the simulator agree without a list of passwords to leak.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from civic_iot.accounts import is_service_account
from civic_iot.files import write_atomic

DeviceKind = Literal["air", "water", "seismic"]

#: A device id is its MQTT user name and one level of its topics ``devices/{id}/...``, and
#: a line of Mosquitto's ``passwd`` (``id:hash``) and ``acl`` (``user id``) files: so no
#: ``/``, ``+``, ``#`` (topic syntax), ``:`` (the passwd separator), whitespace, or leading
#: ``$`` (the broker's own topics); 1 to 64 characters.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
DEVICE_ID_RULE = (
    "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
    "(it is the device's MQTT user name and a topic level)"
)


class RegistryError(ValueError):
    """A registry, or a change to one, that is refused; ``problems`` names each reason."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{what}:\n" + "\n".join(f"  - {p}" for p in self.problems))


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

    id: str = Field(pattern=DEVICE_ID_PATTERN)
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
        problems = _registry_problems(self.townships, self.devices)
        if problems:
            raise RegistryError("device registry refused", problems)
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


def _registry_problems(townships: Sequence[Township], devices: Sequence[Device]) -> list[str]:
    """Why a set of townships and devices is not a registry (empty when it is)."""
    problems: list[str] = []
    counts = Counter(d.id for d in devices)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        problems.append(f"duplicate device ids {dupes}")
    taken = sorted(i for i in counts if is_service_account(i))
    if taken:
        problems.append(f"device ids {taken} are MQTT service accounts (civic_iot.accounts)")
    codes = {t.code for t in townships}
    unknown = sorted({d.township for d in devices} - codes)
    if townships and unknown:
        problems.append(f"devices name unknown townships {unknown}")
    return problems


# ------------------------------------------------------------------ changes (pure)

#: One device to add, as read from a file, and where it was read (``line 7``, ``item 3``),
#: so that a refusal names the row.
DeviceRow = tuple[str, Mapping[str, Any]]


def _row_problems(
    where: str,
    row: Mapping[str, Any],
    registry: Registry,
    first_seen: dict[str, str],
) -> tuple[Device | None, list[str]]:
    """A row's device, or ``None`` and every reason it is refused (``first_seen``: id ->
    the row that brought it, filled here)."""
    raw_id, town = row.get("id"), row.get("township")
    label = f"{where} (id {raw_id!r})" if raw_id not in (None, "") else where
    problems: list[str] = []
    if raw_id in (None, ""):
        problems.append(f"{where}: no id")
    elif not isinstance(raw_id, str) or not _DEVICE_ID.match(raw_id):
        problems.append(f"{label}: not a valid device id: {DEVICE_ID_RULE}")
    elif is_service_account(raw_id):
        problems.append(f"{label}: the id is an MQTT service account (civic_iot.accounts)")
    elif registry.get(raw_id) is not None:
        problems.append(f"{label}: already registered")
    elif raw_id in first_seen:
        problems.append(f"{label}: repeats the id of {first_seen[raw_id]}")
    else:
        first_seen[raw_id] = where
    if registry.townships and town is not None and registry.township(str(town)) is None:
        problems.append(f"{label}: unknown township {town!r}")
    unknown = sorted(str(k) for k in row if k not in Device.model_fields)
    if unknown:
        problems.append(f"{label}: unknown fields {unknown}; expected {list(Device.model_fields)}")
    try:
        device = Device.model_validate(dict(row))
    except ValidationError as exc:
        problems += [
            f"{label}: {'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}"
            for e in exc.errors(include_url=False)
            # The id was judged above, in the registry's own words.
            if tuple(e["loc"]) != ("id",)
        ]
        return None, problems
    return (device if not problems else None), problems


def add_devices(registry: Registry, rows: Sequence[DeviceRow]) -> Registry:
    """The registry with these devices added, or :class:`RegistryError` naming every bad
    row (nothing is added then): invalid fields or ids, ids already registered, repeated
    in the batch or taken by a service account, unknown townships."""
    if not rows:
        raise RegistryError("nothing added", ["no devices given"])
    problems: list[str] = []
    new: list[Device] = []
    bad_rows = 0
    first_seen: dict[str, str] = {}
    for where, row in rows:
        device, bad = _row_problems(where, row, registry, first_seen)
        problems += bad
        bad_rows += bool(bad)
        if device is not None:
            new.append(device)
    if problems:
        raise RegistryError(
            f"{bad_rows} of {len(rows)} device row(s) refused, nothing added", problems
        )
    return Registry(townships=registry.townships, devices=(*registry.devices, *new))


def remove_devices(registry: Registry, ids: Iterable[str]) -> Registry:
    """The registry without these devices, or :class:`RegistryError` naming every id that
    is not registered (nothing is removed then)."""
    gone = list(dict.fromkeys(ids))
    unknown = [i for i in gone if registry.get(i) is None]
    if unknown:
        raise RegistryError(
            "nothing removed", [f"{i!r} is not a registered device" for i in unknown]
        )
    if not gone:
        raise RegistryError("nothing removed", ["no device ids given"])
    drop = set(gone)
    kept = tuple(d for d in registry.devices if d.id not in drop)
    return Registry(townships=registry.townships, devices=kept)


# ------------------------------------------------------------------ files


def load_registry(path: Path) -> Registry:
    """Read a registry YAML file (``townships:`` and ``devices:`` lists)."""
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader) or {}  # noqa: S506 - a safe loader
    return Registry.model_validate(data)


# libyaml's loader and dumper when PyYAML was built with it: five to ten times faster
# on a registry of a thousand devices.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def flow_yaml(item: Mapping[str, Any]) -> str:
    """One mapping as one line of YAML flow style (the registry and thresholds files)."""
    text: str = yaml.dump(
        dict(item),
        Dumper=_SafeDumper,
        default_flow_style=True,
        allow_unicode=True,
        sort_keys=False,
        width=10_000,
    )
    return text.strip()


def registry_yaml(registry: Registry, header: Sequence[str] = ()) -> str:
    """The registry as YAML: ``header`` comment lines, then one township or device per
    line (diffs of a change show one line per device)."""
    data = registry.model_dump(mode="json", exclude_defaults=True)
    lines = [*header, "townships:"]
    lines += [f"- {flow_yaml(t)}" for t in data.get("townships", [])]
    lines.append("devices:")
    lines += [f"- {flow_yaml(d)}" for d in data.get("devices", [])]
    return "\n".join(lines) + "\n"


def save_registry(registry: Registry, path: Path) -> None:
    """Replace the registry file atomically (a reader sees the old file or the new one),
    keeping its leading comment lines and its file mode."""
    header: list[str] = []
    mode = 0o644
    if path.exists():
        mode = path.stat().st_mode & 0o777
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
    write_atomic(path, registry_yaml(registry, header), mode=mode)


def device_secret(data_dir: Path) -> bytes:
    """The installation's device secret, created on first use (never in the repo)."""
    path = data_dir / "secrets" / "device-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".device-secret.")  # 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32))
            # A hard link appears whole or not at all and never replaces a file: of two
            # first uses at once, both keep the one secret that won.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip().encode()


def device_password(secret: bytes, device_id: str) -> str:
    """A device's MQTT password: ``HMAC-SHA256(secret, device_id)`` in hex."""
    return hmac.new(secret, device_id.encode(), hashlib.sha256).hexdigest()


def service_password(data_dir: Path, user: str) -> str:
    """The password of a service account (ingest, alerts, subscribers)."""
    return device_password(device_secret(data_dir), f"service:{user}")
