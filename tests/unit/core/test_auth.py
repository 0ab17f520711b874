"""API tokens: issued once, hashed at rest, roles that include the lower ones, revocation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from civic_iot.auth import AuthError, Principal, TokenStore, parse_bearer
from civic_iot.settings import get_settings
from ops.cli import app


def test_an_issued_token_authenticates_its_principal_and_role(tmp_path: Path) -> None:
    store = TokenStore.of(tmp_path)
    record, token = store.issue("wra", "agency", "flood desk")
    who = store.authenticate(token)
    assert who == Principal(name="wra", role="agency", token_id=record.id)
    # Another process's store sees the same file.
    assert TokenStore.of(tmp_path).authenticate(token).name == "wra"


def test_only_a_hash_is_at_rest_and_the_file_is_private(tmp_path: Path) -> None:
    store = TokenStore.of(tmp_path)
    _, token = store.issue("eoc", "operator")
    text = store.path.read_text()
    secret = token.split("_", 2)[2]  # civ_<id>_<secret>; the secret may hold "_" itself
    assert secret not in text
    assert token not in text
    assert json.loads(text)["tokens"][0]["sha256"]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "civ_",
        "civ_000000000000_" + "A" * 43,  # unknown id
        "Bearer x",
        "\u00e9" * 70,  # not ASCII: answered, not crashed
        "civ_zzzzzzzzzzzz_" + "A" * 43,
    ],
)
def test_unknown_or_malformed_tokens_are_401(tmp_path: Path, bad: str) -> None:
    store = TokenStore.of(tmp_path)
    store.issue("wra", "agency")
    with pytest.raises(AuthError) as info:
        store.authenticate(bad)
    assert info.value.status == 401


def test_a_wrong_secret_for_a_known_id_is_401(tmp_path: Path) -> None:
    store = TokenStore.of(tmp_path)
    _, token = store.issue("wra", "agency")
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(AuthError) as info:
        store.authenticate(forged)
    assert info.value.status == 401


def test_revoked_tokens_stop_working_in_every_process(tmp_path: Path) -> None:
    service = TokenStore.of(tmp_path)  # a running service's view
    admin = TokenStore.of(tmp_path)  # the CLI
    record, token = admin.issue("wra", "agency")
    assert service.authenticate(token).name == "wra"
    assert admin.revoke([record.id]) == [record.id]
    with pytest.raises(AuthError):
        service.authenticate(token)
    assert admin.revoke([record.id]) == []  # already revoked: nothing new
    with pytest.raises(KeyError):
        admin.revoke(["ffffffffffff"])


@pytest.mark.parametrize(
    ("role", "needs", "ok"),
    [
        ("agency", "agency", True),
        ("agency", "operator", False),
        ("operator", "agency", True),
        ("operator", "operator", True),
        ("operator", "admin", False),
        ("admin", "operator", True),
    ],
)
def test_roles_include_the_lower_ones(role: str, needs: str, ok: bool) -> None:
    who = Principal.model_validate({"name": "x", "role": role, "token_id": "a" * 12})
    assert who.may(needs) is ok  # type: ignore[arg-type]
    if ok:
        who.require(needs)  # type: ignore[arg-type]
    else:
        with pytest.raises(AuthError) as info:
            who.require(needs)  # type: ignore[arg-type]
        assert info.value.status == 403


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc")],
)
def test_bearer_header(header: str, token: str) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   ", "abc"])
def test_anything_but_a_bearer_header_is_401(header: str | None) -> None:
    with pytest.raises(AuthError) as info:
        parse_bearer(header)
    assert info.value.status == 401


def test_the_cli_creates_lists_and_revokes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVIC_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        made = runner.invoke(app, ["tokens", "create", "wra", "--role", "agency"])
        assert made.exit_code == 0, made.output
        token = made.stdout.strip().splitlines()[0]
        who = TokenStore.of(tmp_path).authenticate(token)
        listed = runner.invoke(app, ["tokens", "list"])
        assert who.token_id in listed.stdout
        assert token.rsplit("_", 1)[1] not in listed.stdout
        assert runner.invoke(app, ["tokens", "revoke", who.token_id]).exit_code == 0
        with pytest.raises(AuthError):
            TokenStore.of(tmp_path).authenticate(token)
        bad = runner.invoke(app, ["tokens", "create", "wra", "--role", "root"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()


def test_the_token_file_is_under_the_data_dir_unless_settings_move_it(tmp_path: Path) -> None:
    from civic_iot.settings import Settings  # noqa: PLC0415

    default = Settings(data_dir=tmp_path)
    assert default.tokens_file == tmp_path / "secrets" / "api-tokens.json"
    _, token = TokenStore.at(default.tokens_file).issue("wra", "agency")
    # TokenStore.of(data dir) and the settings' file are one file.
    assert TokenStore.of(tmp_path).authenticate(token).name == "wra"
    moved = Settings(data_dir=tmp_path, api_tokens_file=tmp_path / "shared" / "tokens.json")
    assert moved.tokens_file == tmp_path / "shared" / "tokens.json"
    with pytest.raises(AuthError):
        TokenStore.at(moved.tokens_file).authenticate(token)


@pytest.mark.parametrize(
    ("alerts", "url"),
    [
        ({}, "http://127.0.0.1:8095"),
        ({"http_host": "0.0.0.0", "http_port": 9000}, "http://127.0.0.1:9000"),
        ({"http_host": "::1"}, "http://[::1]:8095"),
        ({"http_host": "0.0.0.0", "url": "http://alerts:8095/"}, "http://alerts:8095"),
    ],
)
def test_the_alert_service_is_reached_where_it_listens_or_where_told(
    alerts: dict[str, object], url: str
) -> None:
    from civic_iot.settings import AlertSettings  # noqa: PLC0415

    assert AlertSettings.model_validate(alerts).base_url == url
