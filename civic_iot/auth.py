"""API tokens and roles: who may call the HTTP APIs, in one place for every service.

Every HTTP endpoint but ``/health`` authenticates with a bearer token
(``Authorization: Bearer civ_<id>_<secret>``); cookies are never read. A token belongs
to a principal (an operator, an agency, an admin, a service) and carries one role:

- ``agency``: read alerts and data, manage the agency's own subscriptions;
- ``operator``: what an agency may, and acknowledge alerts;
- ``admin``: everything, including other principals' subscriptions and tokens.

Tokens are created by ``civic-iot tokens create`` (the secret is shown once), listed and
revoked by the same command group. At rest only a SHA-256 of the secret is kept (the
secret is 256 random bits, so a fast hash is enough; comparison is constant-time), in
``<data dir>/secrets/api-tokens.json`` (0600, replaced atomically). Services read the
file at start and again whenever it changes (:meth:`TokenStore.refresh`), so creating or
revoking a token takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from civic_iot.files import write_atomic

#: The token file's place under a data dir (``Settings.tokens_file`` may move it).
TOKENS_FILE = Path("secrets") / "api-tokens.json"

Role = Literal["agency", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
#: What each role includes: a higher role may do everything a lower one may.
_RANK: dict[str, int] = {role: i for i, role in enumerate(ROLES)}

TOKEN_PREFIX = "civ_"  # noqa: S105 - a prefix that marks our tokens, not a secret
_TOKEN = re.compile(r"civ_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
#: A principal's name: letters, digits, ``.``, ``_``, ``-``, ``@`` (an agency id, an email).
PRINCIPAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class AuthError(Exception):
    """A request without valid credentials (HTTP 401) or with too little right (403)."""

    def __init__(self, status: Literal[401, 403], message: str) -> None:
        super().__init__(message)
        self.status: Literal[401, 403] = status
        self.message = message


class Principal(BaseModel):
    """Who is calling, as a valid token says."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Role
    token_id: str

    def may(self, role: Role) -> bool:
        """Whether this principal's role includes ``role``."""
        return _RANK[self.role] >= _RANK[role]

    def require(self, role: Role) -> None:
        """Raise a 403 :class:`AuthError` unless this principal's role includes ``role``."""
        if not self.may(role):
            msg = f"{self.name!r} has role {self.role!r}; this needs {role!r} or higher"
            raise AuthError(403, msg)


class TokenRecord(BaseModel):
    """One issued token, as stored (the secret's hash, never the secret)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    principal: str = Field(pattern=PRINCIPAL_PATTERN)
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: AwareDatetime
    note: str = ""
    revoked_at: AwareDatetime | None = None


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    tokens: list[TokenRecord] = Field(default_factory=list)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def parse_bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header, or a 401 :class:`AuthError`."""
    if not header:
        raise AuthError(401, "missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "Authorization must be 'Bearer <token>'")
    return token.strip()


class TokenStore:
    """The token file of one installation; safe to share between processes (every write
    replaces the file whole, readers pick the change up on :meth:`refresh`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns: int | None = None
        self._by_id: dict[str, TokenRecord] = {}

    @classmethod
    def of(cls, data_dir: Path) -> TokenStore:
        """The file at its default place under ``data_dir``."""
        return cls.at(data_dir / TOKENS_FILE)

    @classmethod
    def at(cls, path: Path) -> TokenStore:
        """The file at ``path`` (an installation's: ``Settings.tokens_file``), read."""
        store = cls(path)
        store.refresh()
        return store

    # ------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Read the file again if it changed since the last read (cheap otherwise)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._by_id, self._mtime_ns = {}, None
            return
        if mtime == self._mtime_ns:
            return
        try:
            doc = _TokenFile.model_validate_json(self.path.read_bytes())
        except (ValidationError, ValueError) as exc:
            msg = f"{self.path}: not a civic-iot token file ({exc})"
            raise ValueError(msg) from None
        self._by_id = {t.id: t for t in doc.tokens}
        self._mtime_ns = mtime

    def records(self) -> list[TokenRecord]:
        self.refresh()
        return sorted(self._by_id.values(), key=lambda t: t.created_at)

    def authenticate(self, token: str) -> Principal:
        """The principal a token belongs to, or a 401 :class:`AuthError` (unknown, malformed
        or revoked tokens all answer alike: nothing to learn from the difference)."""
        m = _TOKEN.fullmatch(token)
        self.refresh()
        record = self._by_id.get(m.group(1)) if m else None
        # Compare even when the id is unknown, so the time taken says nothing either.
        expected = record.sha256 if record is not None else "0" * 64
        ok = hmac.compare_digest(expected, _digest(m.group(2) if m else token[:64]))
        if record is None or not ok or record.revoked_at is not None:
            raise AuthError(401, "invalid or revoked token")
        return Principal(name=record.principal, role=record.role, token_id=record.id)

    def authenticate_header(self, header: str | None) -> Principal:
        return self.authenticate(parse_bearer(header))

    # ------------------------------------------------------------------ writing

    def issue(
        self, principal: str, role: Role, note: str = "", *, now: datetime | None = None
    ) -> tuple[TokenRecord, str]:
        """A new token for ``principal``: (the stored record, the token, shown once)."""
        self.refresh()
        token_id = secrets.token_hex(6)
        while token_id in self._by_id:
            token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)  # 43 characters, 256 bits
        record = TokenRecord(
            id=token_id,
            principal=principal,
            role=role,
            sha256=_digest(secret),
            created_at=now or datetime.now(UTC),
            note=note,
        )
        self._write([*self._by_id.values(), record])
        return record, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke(self, token_ids: Iterable[str], *, now: datetime | None = None) -> list[str]:
        """Revoke tokens by id; returns the ids revoked now. An unknown id is an error and
        nothing changes."""
        self.refresh()
        ids = list(token_ids)
        unknown = [i for i in ids if i not in self._by_id]
        if unknown:
            msg = f"unknown token id(s): {', '.join(unknown)}"
            raise KeyError(msg)
        at = now or datetime.now(UTC)
        changed = [i for i in ids if self._by_id[i].revoked_at is None]
        records = [
            r.model_copy(update={"revoked_at": at}) if r.id in changed else r
            for r in self._by_id.values()
        ]
        self._write(records)
        return changed

    def _write(self, records: list[TokenRecord]) -> None:
        text = _TokenFile(tokens=records).model_dump_json(indent=1)
        write_atomic(self.path, text + "\n")
        self._mtime_ns = None
        self.refresh()


def token_json(record: TokenRecord) -> str:
    """A record for listings (never the hash)."""
    return json.dumps(record.model_dump(mode="json", exclude={"sha256"}), ensure_ascii=False)
