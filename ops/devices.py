"""The device lifecycle behind ``civic-iot devices add|remove|sync``: change the registry,
write the broker's credentials, make the running broker reload them. Nothing restarts.

A batch is checked whole before anything is written (:func:`civic_iot.registry.add_devices`
names every bad row). Then the registry file is replaced atomically (ingest picks it up by
its mtime), the broker files are written, keeping the hash of every unchanged user
(:func:`ops.broker.sync`), and the broker of the data dir gets SIGHUP. One change at a time
per data dir: a lock file serialises two operators.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from civic_iot.registry import (
    DeviceRow,
    Registry,
    RegistryError,
    add_devices,
    load_registry,
    remove_devices,
    save_registry,
)
from ops import broker

#: The device fields a CSV file may have as columns (per-device thresholds need YAML or
#: JSON lines: they are a mapping).
CSV_COLUMNS = ("id", "kind", "lat", "lon", "township", "sensor", "elevation_m")


class DeviceFileError(ValueError):
    """A devices file that cannot be read as rows; ``problems`` names each reason."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{path}: cannot read the devices:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


def parse_device_rows(text: str, fmt: str, name: str = "devices") -> list[DeviceRow]:
    """The rows of a devices file, each with where it was found.

    ``fmt``: ``yaml`` (a list of devices, or a mapping with a ``devices:`` list as in the
    registry), ``csv`` (a header row of :data:`CSV_COLUMNS`, empty cells are unset) or
    ``jsonl`` (one JSON object per line, blank lines skipped).
    """
    path = Path(name)
    if fmt == "jsonl":
        rows: list[DeviceRow] = []
        problems: list[str] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {n}: not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"line {n}: a JSON object was expected")
                continue
            rows.append((f"line {n}", obj))
        if problems:
            raise DeviceFileError(path, problems)
        return rows
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        header = [c.strip() for c in reader.fieldnames or []]
        unknown = [c for c in header if c not in CSV_COLUMNS]
        if not header or unknown:
            raise DeviceFileError(
                path,
                [f"columns {unknown or header} unknown; expected some of {list(CSV_COLUMNS)}"],
            )
        rows = []
        long_lines: list[str] = []
        for record in reader:
            if None in record:  # DictReader's key for cells past the header
                long_lines.append(f"line {reader.line_num}: more cells than the header has")
                continue
            cells = {
                k.strip(): v.strip() for k, v in record.items() if isinstance(v, str) and v.strip()
            }
            if cells:
                rows.append((f"line {reader.line_num}", cells))
        if long_lines:
            raise DeviceFileError(path, long_lines)
        return rows
    if fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DeviceFileError(path, [f"not YAML: {exc}"]) from exc
        items = data.get("devices") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise DeviceFileError(path, ["expected a list of devices (or a 'devices:' list)"])
        rows = []
        bad: list[str] = []
        for n, item in enumerate(items, start=1):
            if isinstance(item, dict):
                rows.append((f"item {n}", item))
            else:
                bad.append(f"item {n}: a mapping of device fields was expected")
        if bad:
            raise DeviceFileError(path, bad)
        return rows
    msg = f"unknown devices file format {fmt!r}; expected yaml, csv or jsonl"
    raise ValueError(msg)


def file_format(path: Path) -> str:
    """``yaml``, ``csv`` or ``jsonl`` from the file name."""
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        msg = f"{path}: cannot tell the format from {suffix!r}; use .yaml, .csv or .jsonl"
        raise ValueError(msg)
    return _FORMATS[suffix]


_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def read_device_rows(path: Path) -> list[DeviceRow]:
    """The rows of a devices file (format from its name, :func:`file_format`)."""
    return parse_device_rows(path.read_text(encoding="utf-8"), file_format(path), str(path))


@dataclass(frozen=True, slots=True)
class Change:
    """What a lifecycle command did."""

    devices: tuple[str, ...]
    registry_size: int
    #: Users whose password hash was computed (the other lines were kept).
    hashed: int
    #: The broker that was told to reload (SIGHUP), or ``None`` when none runs here.
    reloaded_pid: int | None


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "devices.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _apply(registry_path: Path, data_dir: Path, new: Registry, ids: Sequence[str]) -> Change:
    save_registry(new, registry_path)
    files = broker.sync(new, data_dir)
    pid = broker.reload(data_dir)
    return Change(tuple(ids), len(new), len(files.hashed), pid)


def add(
    registry_path: Path, data_dir: Path, rows: Sequence[DeviceRow], *, dry_run: bool = False
) -> Change:
    """Register ``rows`` (all or none: :class:`RegistryError` names every bad row)."""
    with _locked(data_dir):
        registry = load_registry(registry_path)
        new = add_devices(registry, rows)
        ids = [d.id for d in new.devices[len(registry) :]]
        if dry_run:
            return Change(tuple(ids), len(new), 0, None)
        return _apply(registry_path, data_dir, new, ids)


def remove(registry_path: Path, data_dir: Path, ids: Sequence[str]) -> Change:
    """Unregister devices (all or none: :class:`RegistryError` names unknown ids); after
    the reload their credentials no longer work."""
    with _locked(data_dir):
        new = remove_devices(load_registry(registry_path), ids)
        return _apply(registry_path, data_dir, new, list(dict.fromkeys(ids)))


def sync(registry_path: Path, data_dir: Path) -> Change:
    """Write the broker files from the registry as it is, and reload the broker."""
    with _locked(data_dir):
        registry = load_registry(registry_path)
        files = broker.sync(registry, data_dir)
        return Change((), len(registry), len(files.hashed), broker.reload(data_dir))


def single_row(**fields: Any) -> list[DeviceRow]:
    """The one row of ``devices add ID --kind ...`` (unset options left out)."""
    return [("arguments", {k: v for k, v in fields.items() if v is not None})]


__all__ = [
    "CSV_COLUMNS",
    "Change",
    "DeviceFileError",
    "RegistryError",
    "add",
    "file_format",
    "parse_device_rows",
    "read_device_rows",
    "remove",
    "single_row",
    "sync",
]
