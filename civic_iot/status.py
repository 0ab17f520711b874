"""``civic-iot status``: the services and the civic-iot processes, health and key metrics."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request

from civic_iot.demo import http_json
from civic_iot.settings import REPO_ROOT, Settings


def _metrics(url: str) -> dict[str, float]:
    """Sum Prometheus samples by metric name (labels folded)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)$", line)
        if m and not line.startswith("#") and m.group(2) != "NaN":
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def collect(settings: Settings) -> list[tuple[str, str, str]]:
    """(component, state, detail) rows."""
    rows: list[tuple[str, str, str]] = []
    out = subprocess.run(  # noqa: S603
        ["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "status"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            rows.append((parts[0], parts[1], " ".join(parts[2:])))
    ingest = f"http://127.0.0.1:{settings.ingest.http_port}"
    health = http_json(f"{ingest}/health")
    if health is None:
        rows.append(("ingest", "down", f"no answer on {ingest}/health"))
    else:
        m = _metrics(f"{ingest}/metrics")
        rows.append(
            (
                "ingest",
                "healthy" if health.get("mqtt_connected") else "unhealthy",
                f"accepted={int(health.get('accepted', 0))} "
                f"deadletters={int(m.get('civic_ingest_deadletters_total', 0))}",
            )
        )
    wport = settings.processors.web_port
    rows.append(("worker", "up" if _port_open(wport) else "down", f"faust web 127.0.0.1:{wport}"))
    alerts = f"http://{settings.alerts.http_host}:{settings.alerts.http_port}"
    ah = http_json(f"{alerts}/health")
    if ah is None:
        rows.append(("alerts", "down", f"no answer on {alerts}/health"))
    else:
        # One instance is active, the others standby (leader election on alerts.leader);
        # only the active one knows the open alerts.
        role = str(ah.get("role", "active"))
        detail = f"role={role}"
        if role == "active":
            opened = http_json(f"{alerts}/alerts") or []
            n = len(opened.get("alerts", [])) if isinstance(opened, dict) else len(opened)
            detail += f" open alerts={n}"
        rows.append(("alerts", "healthy", f"{detail} instance={ah.get('instance', '?')}"))
    return rows
