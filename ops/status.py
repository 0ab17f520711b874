"""``civic-iot status``: the services and the civic-iot processes, health and key metrics."""

from __future__ import annotations

import subprocess
from typing import Any

from civic_iot.settings import REPO_ROOT, Settings
from ops.probe import read_health, read_metrics


def _health(url: str) -> dict[str, Any] | None:
    return read_health(url)[1]


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
    health = _health(f"{ingest}/health")
    if health is None:
        rows.append(("ingest", "down", f"no answer on {ingest}/health"))
    else:
        m = read_metrics(f"{ingest}/metrics")
        rows.append(
            (
                "ingest",
                "healthy" if health.get("mqtt_connected") else "unhealthy",
                f"accepted={int(health.get('accepted', 0))} "
                f"deadletters={int(m.get('civic_ingest_deadletters_total', 0))}",
            )
        )
    wport = settings.processors.web_port
    wh = _health(f"http://127.0.0.1:{wport}/health")
    if wh is None:
        rows.append(("worker", "down", f"no answer on 127.0.0.1:{wport}/health"))
    else:
        detail = f"partitions={wh.get('partitions')} lag={wh.get('lag')}"
        if not wh.get("healthy"):
            detail += f" storage failing: {wh.get('storage_failing_s')}"
        rows.append(("worker", "healthy" if wh.get("healthy") else "unhealthy", detail))
    alerts = settings.alerts.base_url
    ah = _health(f"{alerts}/health")  # 503 (degraded) still says why
    if ah is None:
        rows.append(("alerts", "down", f"no answer on {alerts}/health"))
    else:
        # One instance is active, the others standby (leader election on alerts.leader);
        # only the active one knows the open alerts.
        role = str(ah.get("role", "active"))
        detail = f"role={role}"
        if role == "active":
            # /health counts them (the list itself needs an API token).
            detail += f" open alerts={ah.get('open_alerts')}"
        state = "healthy" if ah.get("status") == "ok" else "unhealthy"
        rows.append(("alerts", state, f"{detail} instance={ah.get('instance', '?')}"))
    return rows
