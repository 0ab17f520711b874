"""Make ``taiwan.geojson``, the console's coastline, from Natural Earth.

Source: Natural Earth 1:10m Admin 0 countries (version 4.1.0, public domain,
naturalearthdata.com), as redistributed in TopoJSON by the npm package ``world-atlas``
2.0.2 (``countries-10m.json``). Run once by hand; the output is committed and the
console needs nothing else at run time::

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python api/console/outline.py package/countries-10m.json > api/console/taiwan.geojson

The feature named ``Taiwan`` is decoded (quantised, delta-encoded arcs), its coordinates
rounded to 0.001 degree (about 100 m, below the source's ~360 m quantum), and written as
one GeoJSON MultiPolygon.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _arc(topo: dict[str, Any], index: int) -> list[list[float]]:
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    raw = topo["arcs"][index if index >= 0 else ~index]
    pts, x, y = [], 0, 0
    for dx, dy in raw:
        x, y = x + dx, y + dy
        pts.append([round(x * sx + tx, 3), round(y * sy + ty, 3)])
    return pts if index >= 0 else pts[::-1]


def _ring(topo: dict[str, Any], arcs: list[int]) -> list[list[float]]:
    out: list[list[float]] = []
    for i in arcs:
        pts = _arc(topo, i)
        out.extend(pts if not out else pts[1:])  # arcs share their end points
    return out


def outline(topo: dict[str, Any], name: str = "Taiwan") -> dict[str, Any]:
    geoms = topo["objects"]["countries"]["geometries"]
    g = next(g for g in geoms if g.get("properties", {}).get("name") == name)
    polys = g["arcs"] if g["type"] == "MultiPolygon" else [g["arcs"]]
    coords = [[_ring(topo, ring) for ring in poly] for poly in polys]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {
                    "name": name,
                    "source": "Natural Earth 1:10m Admin 0 countries v4.1.0 (public domain), "
                    "via world-atlas 2.0.2 countries-10m.json",
                },
                "geometry": {"type": "MultiPolygon", "coordinates": coords},
            }
        ],
    }


if __name__ == "__main__":
    doc = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    sys.stdout.write(json.dumps(outline(doc), separators=(",", ":")) + "\n")
