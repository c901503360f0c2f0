"""Timestamps as status stores them (RFC 3339, UTC) and back."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second, like Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """The datetime in a status timestamp (naive values are taken as UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds_between(earlier: str | datetime, later: datetime) -> float:
    """Seconds from ``earlier`` (a timestamp or datetime) to ``later``."""
    start = parse_time(earlier) if isinstance(earlier, str) else earlier
    return (later - start).total_seconds()
