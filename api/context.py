"""What every request of the API shares: settings, tokens, the rate limiter, the Flux
client, and the registry and thresholds as they are on disk now."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from api.influx import FluxClient
from api.ratelimit import RateLimiter
from api.store import Store
from civic_iot.auth import TokenStore
from civic_iot.registry import Registry, load_registry
from civic_iot.settings import Settings
from civic_iot.thresholds import Thresholds, load_thresholds

logger = logging.getLogger(__name__)

__all__ = ["ApiContext", "FileView"]

T = TypeVar("T")


class FileView(Generic[T]):
    """A file's parsed content, read again when its modification time changes (checked at
    most every ``check_every_s``), so ``civic-iot devices add`` shows without a restart.
    A file that fails to parse keeps the last good content (logged) if there is one."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        *,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._load = load
        self._check_every_s = check_every_s
        self._clock = clock
        self._value: T | None = None
        self._mtime: int | None = None
        self._checked = -float("inf")
        #: Bumped on every successful load (derived caches key on it).
        self.version = 0

    def get(self) -> T:
        now = self._clock()
        if self._value is None or now - self._checked >= self._check_every_s:
            self._checked = now
            mtime = self.path.stat().st_mtime_ns
            if self._value is None or mtime != self._mtime:
                try:
                    self._value = self._load(self.path)
                except (OSError, ValueError):
                    if self._value is None:
                        raise
                    logger.exception("file refused, keeping the last good one path=%s", self.path)
                else:
                    self.version += 1
                self._mtime = mtime
        assert self._value is not None
        return self._value


@dataclass
class ApiContext:
    """Shared by every request (``request.app.state.ctx``)."""

    settings: Settings
    tokens: TokenStore
    limiter: RateLimiter
    flux: FluxClient
    registry: FileView[Registry]
    clock: Callable[[], float] = time.monotonic
    _thresholds: tuple[int, Thresholds] | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(
                self.flux,
                self.settings.influx,
                cache_ttl_s=self.settings.api.cache_ttl_s,
                clock=self.clock,
            )
        return self._store

    def thresholds(self) -> Thresholds:
        """The thresholds file checked against the registry as it is now."""
        registry = self.registry.get()
        version = self.registry.version
        path = self.settings.thresholds
        key = hash((version, path.stat().st_mtime_ns))
        if self._thresholds is None or self._thresholds[0] != key:
            self._thresholds = (key, load_thresholds(path, registry))
        return self._thresholds[1]

    @classmethod
    def of(cls, settings: Settings, token: str) -> ApiContext:
        api = settings.api
        return cls(
            settings=settings,
            tokens=TokenStore.of(settings.data_dir),
            limiter=RateLimiter(api.public_rate_per_s, api.public_burst, api.rate_limit_clients),
            flux=FluxClient(settings.influx.url, settings.influx.org, token, api.query_timeout_s),
            registry=FileView(settings.registry, load_registry),
        )
