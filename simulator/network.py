"""A realistic, seeded device network for northern Taiwan, written as ``deploy/devices.yaml``.

``python -m simulator.network --out deploy/devices.yaml`` regenerates the file, and the
``regions`` and ``devices`` sections of ``deploy/thresholds.yaml`` (the townships' R70 and
the river gauges' warning levels; the ``defaults`` above them are kept as written); the
same seed always gives the same files. The network:

- 40 townships (districts of Taipei City, New Taipei City, Keelung, Taoyuan, Hsinchu and
  Yilan) with their English and Chinese names, county, an approximate centroid (degrees,
  WGS 84), an 8-digit MOI town code and, for hilly towns, a debris-flow rainfall threshold
  R70 (mm, in 50 mm steps);
- about 300 air-quality micro-sensors, more where more people live;
- 20 river stage gauges, 20 street/underpass flood-depth sensors and 20 rain gauges
  (kind ``water``; river gauges carry their warning levels as elevations, m);
- 26 accelerometers (kind ``seismic``) spread over the whole area.

Every device stands near its township's centroid (a few km of jitter) and belongs to the
nearest township centroid.

Centroids, codes and R70 values are approximations for a simulation, not survey data:
the town codes follow the MOI pattern (county code + 3-digit town number + ``0``) as we
recall it (*unconfirmed*), and the R70 values are plausible SWCB-style numbers chosen per
town (*unconfirmed*, not the agency's published table).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from civic_iot.registry import Device, Registry, Township, flow_yaml, registry_yaml
from civic_iot.thresholds import Thresholds, thresholds_from

__all__ = [
    "DEFAULT_SEED",
    "TOWNS",
    "NetworkSpec",
    "TownSpec",
    "build_network",
    "dump_registry",
    "dump_thresholds",
    "main",
    "nearest_township",
    "network_thresholds",
    "with_thresholds",
]

DEFAULT_SEED = 20250101
KM_PER_DEG_LAT = 111.2


@dataclass(frozen=True, slots=True)
class TownSpec:
    """A township as the generator knows it.

    Attributes:
        code: 8-digit MOI town code (approximate, *unconfirmed*).
        name: English and Chinese name.
        county: county or city, English.
        lat, lon: approximate centroid, degrees.
        weight: relative share of air sensors (roughly population).
        r70_mm: debris-flow threshold R70, mm, for hilly towns (None on the plains).
        river: True where a river gauge makes sense (a main river runs through).
    """

    code: str
    name: str
    county: str
    lat: float
    lon: float
    weight: float
    r70_mm: float | None = None
    river: bool = False


# Approximate data, see the module docstring: codes and R70 are *unconfirmed*.
TOWNS: tuple[TownSpec, ...] = (
    # Taipei City (63000)
    TownSpec("63000010", "Songshan District 松山區", "Taipei City", 25.050, 121.558, 2.0),
    TownSpec("63000020", "Xinyi District 信義區", "Taipei City", 25.033, 121.568, 2.2),
    TownSpec("63000030", "Da'an District 大安區", "Taipei City", 25.026, 121.543, 3.0),
    TownSpec(
        "63000040", "Zhongshan District 中山區", "Taipei City", 25.069, 121.533, 2.3, river=True
    ),
    TownSpec("63000050", "Zhongzheng District 中正區", "Taipei City", 25.032, 121.518, 1.6),
    TownSpec("63000060", "Datong District 大同區", "Taipei City", 25.063, 121.513, 1.3),
    TownSpec("63000070", "Wanhua District 萬華區", "Taipei City", 25.028, 121.497, 1.9, river=True),
    TownSpec(
        "63000080", "Wenshan District 文山區", "Taipei City", 24.989, 121.570, 2.7, 450.0, True
    ),
    TownSpec(
        "63000090", "Nangang District 南港區", "Taipei City", 25.047, 121.607, 1.2, 450.0, True
    ),
    TownSpec("63000100", "Neihu District 內湖區", "Taipei City", 25.069, 121.589, 2.8, 400.0, True),
    TownSpec(
        "63000110", "Shilin District 士林區", "Taipei City", 25.105, 121.535, 2.8, 400.0, True
    ),
    TownSpec("63000120", "Beitou District 北投區", "Taipei City", 25.132, 121.501, 2.5, 350.0),
    # New Taipei City (65000)
    TownSpec(
        "65000010", "Banqiao District 板橋區", "New Taipei City", 25.011, 121.462, 5.5, None, True
    ),
    TownSpec(
        "65000020", "Sanchong District 三重區", "New Taipei City", 25.062, 121.488, 3.8, None, True
    ),
    TownSpec("65000030", "Zhonghe District 中和區", "New Taipei City", 24.999, 121.499, 4.1),
    TownSpec(
        "65000050", "Xinzhuang District 新莊區", "New Taipei City", 25.036, 121.450, 4.2, None, True
    ),
    TownSpec(
        "65000060", "Xindian District 新店區", "New Taipei City", 24.938, 121.538, 3.0, 350.0, True
    ),
    TownSpec(
        "65000090", "Sanxia District 三峽區", "New Taipei City", 24.934, 121.369, 1.2, 300.0, True
    ),
    TownSpec(
        "65000100", "Tamsui District 淡水區", "New Taipei City", 25.169, 121.441, 1.9, 400.0, True
    ),
    TownSpec(
        "65000110", "Xizhi District 汐止區", "New Taipei City", 25.067, 121.640, 2.0, 350.0, True
    ),
    TownSpec(
        "65000120", "Ruifang District 瑞芳區", "New Taipei City", 25.108, 121.806, 0.6, 300.0, True
    ),
    TownSpec("65000130", "Tucheng District 土城區", "New Taipei City", 24.972, 121.443, 2.4, 450.0),
    TownSpec(
        "65000290", "Wulai District 烏來區", "New Taipei City", 24.865, 121.551, 0.3, 250.0, True
    ),
    # Keelung City (10017)
    TownSpec(
        "10017010",
        "Zhongzheng District 中正區 (Keelung)",
        "Keelung City",
        25.143,
        121.773,
        0.8,
        400.0,
    ),
    TownSpec("10017030", "Qidu District 七堵區", "Keelung City", 25.112, 121.713, 0.9, 350.0, True),
    TownSpec("10017040", "Ren'ai District 仁愛區", "Keelung City", 25.127, 121.741, 0.8, 400.0),
    # Taoyuan City (68000)
    TownSpec("68000010", "Taoyuan District 桃園區", "Taoyuan City", 24.993, 121.301, 4.5),
    TownSpec("68000020", "Zhongli District 中壢區", "Taoyuan City", 24.965, 121.224, 4.2),
    TownSpec("68000030", "Daxi District 大溪區", "Taoyuan City", 24.881, 121.287, 1.0, 350.0, True),
    TownSpec("68000070", "Guishan District 龜山區", "Taoyuan City", 25.029, 121.346, 1.8, 450.0),
    TownSpec(
        "68000130", "Fuxing District 復興區", "Taoyuan City", 24.736, 121.353, 0.3, 250.0, True
    ),
    # Hsinchu City (10018) and Hsinchu County (10004)
    TownSpec(
        "10018010", "East District 東區 (Hsinchu)", "Hsinchu City", 24.789, 121.000, 2.2, None, True
    ),
    TownSpec("10004010", "Zhubei City 竹北市", "Hsinchu County", 24.838, 121.004, 2.0, None, True),
    TownSpec(
        "10004130", "Jianshi Township 尖石鄉", "Hsinchu County", 24.575, 121.310, 0.3, 250.0, True
    ),
    # Yilan County (10002)
    TownSpec("10002010", "Yilan City 宜蘭市", "Yilan County", 24.757, 121.753, 1.1, None, True),
    TownSpec(
        "10002020", "Luodong Township 羅東鎮", "Yilan County", 24.677, 121.767, 0.9, None, True
    ),
    TownSpec(
        "10002030", "Su'ao Township 蘇澳鎮", "Yilan County", 24.596, 121.851, 0.5, 300.0, True
    ),
    TownSpec("10002040", "Toucheng Township 頭城鎮", "Yilan County", 24.859, 121.823, 0.4, 300.0),
    TownSpec("10002050", "Jiaoxi Township 礁溪鄉", "Yilan County", 24.827, 121.771, 0.5, 350.0),
    TownSpec(
        "10002100", "Sanxing Township 三星鄉", "Yilan County", 24.667, 121.653, 0.3, 300.0, True
    ),
)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """How many devices of each type, and how far they stray from a centroid (km)."""

    air: int = 300
    river: int = 20
    flood: int = 20
    rain: int = 20
    seismic: int = 26
    jitter_km: float = 1.5


def _km_to_deg(lat: float, dx_km: float, dy_km: float) -> tuple[float, float]:
    return dy_km / KM_PER_DEG_LAT, dx_km / (KM_PER_DEG_LAT * math.cos(math.radians(lat)))


def _dist_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dy = (lat2 - lat1) * KM_PER_DEG_LAT
    dx = (lon2 - lon1) * KM_PER_DEG_LAT * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


def nearest_township(lat: float, lon: float, towns: Sequence[TownSpec] = TOWNS) -> TownSpec:
    """The township whose centroid is nearest to ``(lat, lon)`` (degrees)."""
    return min(towns, key=lambda t: _dist_km(lat, lon, t.lat, t.lon))


def _place(rng: random.Random, town: TownSpec, jitter_km: float) -> tuple[float, float, str]:
    """A point a few km from ``town``'s centroid, and the code of the nearest township."""
    r = jitter_km * math.sqrt(rng.random())
    a = rng.uniform(0, 2 * math.pi)
    dlat, dlon = _km_to_deg(town.lat, r * math.cos(a), r * math.sin(a))
    lat, lon = round(town.lat + dlat, 5), round(town.lon + dlon, 5)
    return lat, lon, nearest_township(lat, lon).code


def _spread(n: int, towns: Sequence[TownSpec], weights: Sequence[float]) -> list[TownSpec]:
    """``n`` towns in proportion to ``weights`` (largest remainder, deterministic)."""
    total = sum(weights)
    quotas = [n * w / total for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(towns)), key=lambda i: (counts[i] - quotas[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return [t for t, c in zip(towns, counts, strict=True) for _ in range(c)]


def _cycle(n: int, towns: Sequence[TownSpec]) -> list[TownSpec]:
    return [towns[i % len(towns)] for i in range(n)]


def build_network(seed: int = DEFAULT_SEED, spec: NetworkSpec | None = None) -> Registry:
    """The northern-Taiwan registry for ``seed``: same seed, same registry."""
    return _generate(seed, spec)[0]


def network_thresholds(seed: int = DEFAULT_SEED, spec: NetworkSpec | None = None) -> Thresholds:
    """The network's thresholds for ``seed``: the built-in defaults, each hilly township's
    R70 and each river gauge's warning levels (the ``regions`` and ``devices`` of
    ``deploy/thresholds.yaml``)."""
    registry, overrides = _generate(seed, spec)
    return thresholds_from(overrides, registry, source=f"simulator.network seed {seed}")


def _generate(seed: int, spec: NetworkSpec | None) -> tuple[Registry, dict[str, Any]]:
    """The registry and the thresholds document (``regions``, ``devices``) of a seed."""
    spec = spec if spec is not None else NetworkSpec()
    rng = random.Random(seed)
    townships = tuple(
        Township(code=t.code, name=t.name, county=t.county, lat=t.lat, lon=t.lon) for t in TOWNS
    )
    regions = {t.code: {"debris_flow": {"r70_mm": t.r70_mm}} for t in TOWNS if t.r70_mm is not None}
    lines: dict[str, Any] = {}
    devices: list[Device] = []

    def add(
        prefix: str,
        kind: str,
        sensor: str,
        towns: Sequence[TownSpec],
        extra: Callable[[random.Random, TownSpec], dict[str, Any]] | None = None,
    ) -> None:
        for i, town in enumerate(towns, start=1):
            lat, lon, code = _place(rng, town, spec.jitter_km)
            fields: dict[str, Any] = extra(rng, town) if extra is not None else {}
            if "river" in fields:
                lines[f"{prefix}-{i:04d}"] = {"river": fields.pop("river")}
            devices.append(
                Device.model_validate(
                    {
                        "id": f"{prefix}-{i:04d}",
                        "kind": kind,
                        "lat": lat,
                        "lon": lon,
                        "township": code,
                        "sensor": sensor,
                        **fields,
                    }
                )
            )

    add("air", "air", "air", _spread(spec.air, TOWNS, [t.weight for t in TOWNS]))

    river_towns = [t for t in TOWNS if t.river]

    def river_fields(r: random.Random, town: TownSpec) -> dict[str, Any]:
        # Gauge datum (riverbed) elevation, m: near sea level on the plains and in the
        # Taipei basin, tens of metres upstream in the hills. The normal stage is about
        # 1.2 m above it (simulator.scenario.NORMAL_RIVER_DEPTH_M). Warning levels (WRA)
        # are elevations: l3 (yellow) < l2 (orange) < l1 (red).
        upstream = town.r70_mm is not None and town.weight < 1.5
        datum = round(r.uniform(8.0, 80.0) if upstream else r.uniform(-1.0, 6.0), 1)
        l3 = round(datum + r.uniform(3.5, 4.5), 2)
        l2 = round(l3 + r.uniform(1.0, 1.5), 2)
        l1 = round(l2 + r.uniform(0.8, 1.2), 2)
        return {
            "elevation_m": datum,
            "river": {
                "water_level_m_yellow": l3,
                "water_level_m_orange": l2,
                "water_level_m_red": l1,
            },
        }

    add("river", "water", "river", _cycle(spec.river, river_towns), river_fields)
    urban = sorted(TOWNS, key=lambda t: -t.weight)
    add("flood", "water", "flood", _cycle(spec.flood, urban))
    hilly = [t for t in TOWNS if t.r70_mm is not None]
    add("rain", "water", "rain", _cycle(spec.rain, hilly))
    # Seismic stations: one per township, far-apart ones first so any count spreads wide.
    add("seis", "seismic", "accelerometer", _cycle(spec.seismic, _far_first(TOWNS)))
    registry = Registry(townships=townships, devices=tuple(devices))
    return registry, {"regions": regions, "devices": lines}


def _far_first(towns: Sequence[TownSpec]) -> list[TownSpec]:
    """Farthest-point ordering starting from the first town: any prefix is well spread."""
    left = list(towns[1:])
    out = [towns[0]]
    while left:
        nxt = max(left, key=lambda t: min(_dist_km(t.lat, t.lon, o.lat, o.lon) for o in out))
        out.append(nxt)
        left.remove(nxt)
    return out


def dump_registry(registry: Registry, seed: int) -> str:
    """The registry as YAML text: one township or device per line, with a header."""
    header = [
        "# Generated by `python -m simulator.network --out deploy/devices.yaml`"
        f" (seed {seed}); do not edit by hand.",
        "# A simulated network for northern Taiwan. Centroids and town codes (MOI 8-digit",
        "# pattern) are approximate and unconfirmed: simulation data, not survey data.",
        "# elevation_m of a river gauge is its datum (riverbed) elevation. Thresholds (R70,",
        "# river warning levels) are in deploy/thresholds.yaml.",
    ]
    return registry_yaml(registry, header)


#: The line of the thresholds file from which :func:`with_thresholds` rewrites it.
GENERATED_FROM = "regions:"
_GENERATED_MARK = "# Generated by `python -m simulator.network`"


def dump_thresholds(seed: int = DEFAULT_SEED, spec: NetworkSpec | None = None) -> str:
    """The ``regions`` and ``devices`` sections of the thresholds file, one entry a line."""
    _, overrides = _generate(seed, spec)
    lines = [
        f"{_GENERATED_MARK} (seed {seed}) from here to the end:",
        "# the simulated network's R70 per hilly township and warning levels (elevations, m)",
        "# per river gauge; approximate and unconfirmed (simulation data, not the agencies').",
        GENERATED_FROM,
    ]
    lines += [f'  "{code}": {flow_yaml(v)}' for code, v in overrides["regions"].items()]
    lines.append("devices:")
    lines += [f"  {device}: {flow_yaml(v)}" for device, v in overrides["devices"].items()]
    return "\n".join(lines) + "\n"


def with_thresholds(text: str, seed: int = DEFAULT_SEED) -> str:
    """The thresholds file ``text`` with its generated sections rewritten: from the line
    ``# Generated by `python -m simulator.network`...`` (or the first ``regions:``) to
    the end; what precedes it, the ``defaults``, stays as written."""
    lines = text.splitlines()
    cut = next(
        (i for i, line in enumerate(lines) if line.startswith(_GENERATED_MARK)),
        next((i for i, line in enumerate(lines) if line.rstrip() == GENERATED_FROM), len(lines)),
    )
    head = "\n".join(lines[:cut]).rstrip("\n")
    return f"{head}\n\n{dump_thresholds(seed)}" if head else dump_thresholds(seed)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the generated registry to ``--out`` and the generated sections
    of ``--thresholds``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("deploy/devices.yaml"))
    parser.add_argument("--thresholds", type=Path, default=Path("deploy/thresholds.yaml"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    registry = build_network(args.seed)
    args.out.write_text(dump_registry(registry, args.seed), encoding="utf-8")
    old = args.thresholds.read_text(encoding="utf-8") if args.thresholds.exists() else ""
    args.thresholds.write_text(with_thresholds(old, args.seed), encoding="utf-8")
    kinds = {k: len(registry.of_kind(k)) for k in ("air", "water", "seismic")}
    print(f"wrote {args.out}: {len(registry.townships)} townships, {len(registry)} devices {kinds}")


if __name__ == "__main__":
    main()
