"""The demo's latency summary counts only the alert messages a detector decided."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from alerts.lifecycle import Reason
from ops.pipeline import ISSUED_BY, decided_alerts


def msg(ident: str, msg_type: str, reason: str) -> dict[str, Any]:
    return {"identifier": ident, "msg_type": msg_type, "reason": reason}


def test_every_reason_is_classified() -> None:
    """A new reason in the lifecycle must be placed here, or its latency goes unseen."""
    assert set(ISSUED_BY) == set(get_args(Reason))


@pytest.mark.parametrize(
    ("msg_type", "reason", "counted"),
    [
        ("Alert", "new", True),
        ("Update", "escalated", True),
        ("Update", "area_changed", True),
        ("Update", "de-escalated", False),  # after the de-escalation hold
        ("Cancel", "cleared", False),  # after the clear hold: a 60 s "latency" otherwise
        ("Cancel", "expired", False),  # after no candidate for expire_after
    ],
)
def test_timer_issued_messages_are_left_out(msg_type: str, reason: str, counted: bool) -> None:
    assert (decided_alerts([msg("m", msg_type, reason)]) != []) == counted


def test_selection_keeps_the_decided_messages_in_order() -> None:
    alerts = [
        msg("a1", "Alert", "new"),
        msg("a2", "Update", "escalated"),
        msg("a3", "Cancel", "cleared"),
        msg("a4", "Update", "de-escalated"),
        msg("a5", "Alert", "new"),
    ]
    assert [a["identifier"] for a in decided_alerts(alerts)] == ["a1", "a2", "a5"]
