"""The operations console page: built in another branch; this empty router keeps
:mod:`api.app` whole until it lands."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
