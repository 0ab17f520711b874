"""Least-privilege InfluxDB tokens against the real InfluxDB: each client's token does
what ``ops.influx_setup`` says and nothing more, is kept while it fits, and is replaced
(the old one revoked) on rotation.

The test makes its own four buckets and a data dir of its own, so the shared stack's
tokens are never touched; the authorizations it makes are deleted afterwards.
"""

from __future__ import annotations

import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient

from civic_iot.settings import Settings, influx_token, influx_token_path
from ops.influx_setup import ensure_tokens, fingerprint, token_specs

pytestmark = pytest.mark.integration

ROLES = ("readings", "seismic", "derived", "alerts")


@dataclass
class Env:
    settings: Settings
    buckets: dict[str, str]
    admin: InfluxDBClient


@pytest.fixture
def env(stack: Settings, unique: str, tmp_path: Path) -> Iterator[Env]:
    buckets = {role: f"t{unique}-{role}" for role in ROLES}
    settings = stack.model_copy(
        update={
            "data_dir": tmp_path / "civic",
            "influx": stack.influx.model_copy(
                update={f"bucket_{role}": name for role, name in buckets.items()}
            ),
        }
    )
    admin = InfluxDBClient(url=stack.influx.url, token=influx_token(stack), org=stack.influx.org)
    org = admin.organizations_api().find_organizations(org=stack.influx.org)[0]
    api = admin.buckets_api()
    made = [api.create_bucket(bucket_name=n, org=stack.influx.org) for n in buckets.values()]
    try:
        yield Env(settings, buckets, admin)
    finally:
        tokens = (settings.data_dir / "secrets").glob("influx-token-*")
        marks = {f"[{fingerprint(p.read_text().strip())}]" for p in tokens}
        for auth in admin.authorizations_api().find_authorizations(org_id=org.id):
            if any((auth.description or "").endswith(m) for m in marks):
                admin.authorizations_api().delete_authorization(auth)
        for bucket in made:
            admin.buckets_api().delete_bucket(bucket)
        admin.close()


def _status(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def write(s: Settings, token: str, bucket: str, line: str) -> int:
    """HTTP status of one line written with ``token`` (204: stored)."""
    query = urllib.parse.urlencode({"org": s.influx.org, "bucket": bucket, "precision": "s"})
    return _status(
        urllib.request.Request(
            f"{s.influx.url}/api/v2/write?{query}",
            data=line.encode(),
            headers={"Authorization": f"Token {token}"},
            method="POST",
        )
    )


def query(s: Settings, token: str, bucket: str) -> int:
    """HTTP status of a Flux query of ``bucket`` with ``token`` (200: allowed)."""
    flux = f'from(bucket: "{bucket}") |> range(start: -1h) |> limit(n: 1)'
    return _status(
        urllib.request.Request(
            f"{s.influx.url}/api/v2/query?org={urllib.parse.quote(s.influx.org)}",
            data=flux.encode(),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/vnd.flux"},
            method="POST",
        )
    )


def test_each_client_may_do_only_its_job(env: Env) -> None:
    s, b = env.settings, env.buckets
    assert ensure_tokens(env.admin, s) == dict.fromkeys(
        ("processors", "alerts", "grafana", "api"), "created"
    )
    tok = {spec.client: influx_token(s, spec.client) for spec in token_specs(s)}
    for client in tok:
        path = influx_token_path(s.data_dir, client)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(set(tok.values())) == 4

    # The processors write raw readings, seismic samples and derived figures, read none,
    # and cannot touch the alerts.
    for role in ("readings", "seismic", "derived"):
        assert write(s, tok["processors"], b[role], f"t,device=d v=1 {1_700_000_000}") == 204
        assert query(s, tok["processors"], b[role]) in {401, 403, 404}
    assert write(s, tok["processors"], b["alerts"], "t v=1") in {401, 403, 404}

    # The alert service writes its bucket only.
    assert write(s, tok["alerts"], b["alerts"], "t v=1") == 204
    assert write(s, tok["alerts"], b["readings"], "t v=1") in {401, 403, 404}
    assert query(s, tok["alerts"], b["alerts"]) in {401, 403, 404}

    # Grafana and the read API read every bucket and write none.
    for reader in ("grafana", "api"):
        for role in ROLES:
            assert query(s, tok[reader], b[role]) == 200, (reader, role)
        assert write(s, tok[reader], b["derived"], "t v=1") in {401, 403, 404}


def test_tokens_are_kept_then_replaced_on_rotation(env: Env) -> None:
    s = env.settings
    ensure_tokens(env.admin, s)
    before = {c: influx_token(s, c) for c in ("processors", "alerts")}
    assert set(ensure_tokens(env.admin, s).values()) == {"kept"}
    assert influx_token(s, "processors") == before["processors"]

    done = ensure_tokens(env.admin, s, rotate=("alerts",))
    assert done["alerts"] == "replaced"
    assert done["processors"] == "kept"
    new = influx_token(s, "alerts")
    assert new != before["alerts"]
    assert write(s, new, env.buckets["alerts"], "t v=1") == 204
    # The replaced token is revoked at once.
    assert write(s, before["alerts"], env.buckets["alerts"], "t v=1") == 401


def test_a_token_whose_authorization_is_gone_is_made_again(env: Env) -> None:
    s = env.settings
    ensure_tokens(env.admin, s)
    old = influx_token(s, "grafana")
    mark = f"[{fingerprint(old)}]"
    api = env.admin.authorizations_api()
    (auth,) = [a for a in api.find_authorizations() if (a.description or "").endswith(mark)]
    api.delete_authorization(auth)
    assert ensure_tokens(env.admin, s)["grafana"] == "created"
    new = influx_token(s, "grafana")
    assert new != old
    assert query(s, new, env.buckets["derived"]) == 200
