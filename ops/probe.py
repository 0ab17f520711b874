"""Reading the processes' ``/health`` and ``/metrics`` over loopback: one way for the
status table, the pipeline harness, the demo and the tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def http_json(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> Any:
    """The JSON body of a 2xx answer; None when there is no answer, an error or no JSON."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback
            return json.load(resp)
    except (OSError, ValueError):
        return None


def read_health(url: str, timeout: float = 2.0) -> tuple[int | None, dict[str, Any] | None]:
    """(HTTP status, JSON body) of a ``/health``, the body also when it comes with 503
    (unhealthy says why); (None, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    except OSError:
        return None, None
    try:
        body = json.loads(raw)
    except ValueError:
        return status, None
    return status, body if isinstance(body, dict) else None


def read_metrics(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Prometheus samples summed by sample name (labels folded); {} when no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.value == sample.value:  # not NaN
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out
