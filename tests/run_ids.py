"""Ids for this test session's topics, buckets and client names, kept so that the session
removes what it made when it ends (``tests/conftest.py``): a developer's broker and
database would otherwise gather thousands of test topics and buckets (Kafka then runs out
of open files)."""

from __future__ import annotations

import uuid

#: Every id :func:`new_id` gave out in this process.
ISSUED: list[str] = []


def new_id(length: int = 10) -> str:
    """A short unique hex id, remembered for the session's clean-up."""
    uid = uuid.uuid4().hex[:length]
    ISSUED.append(uid)
    return uid


def made_here(name: str) -> bool:
    """Whether a topic or bucket name carries an id this session gave out."""
    return any(uid in name for uid in ISSUED)
