"""A subscription's change history as diffs people can read: one line per changed value.

recurring records each change as the JSON of the fields before and after; a field that holds an
object (an amount, a payment method) is compared value by value, so `amount.amount_minor 1000 → 4900`
says what moved, not two blobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MISSING = object()
EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DiffLine:
    path: str
    before: str  # "" when the value did not exist before
    after: str  # "" when it was removed


@dataclass(frozen=True)
class HistoryDiff:
    changed_at: datetime | None
    actor: str
    reason: str
    cause_event_id: str
    lines: tuple[DiffLine, ...]


def _parse(text: str) -> Any:
    if not text:
        return MISSING
    try:
        return json.loads(text)
    except ValueError:
        return text  # shown as written


def _shown(value: Any) -> str:
    if value is MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def value_diff(path: str, before: Any, after: Any) -> list[DiffLine]:
    """The changed leaves between two JSON values, objects compared key by key."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        lines: list[DiffLine] = []
        for key in sorted(set(before) | set(after)):
            lines += value_diff(f"{path}.{key}", before.get(key, MISSING), after.get(key, MISSING))
        return lines
    return [DiffLine(path, _shown(before), _shown(after))]


def entry_diff(entry: Mapping[str, Any]) -> HistoryDiff:
    """One recorded change (`changes`: field, previous_json, new_json) as its diff lines."""
    lines: list[DiffLine] = []
    for change in entry.get("changes", ()):
        lines += value_diff(change["field"], _parse(change["previous_json"]), _parse(change["new_json"]))
    return HistoryDiff(
        entry.get("changed_at"),
        entry.get("actor", ""),
        entry.get("reason", ""),
        entry.get("cause_event_id", ""),
        tuple(lines),
    )


def history_diffs(entries: Iterable[Mapping[str, Any]]) -> list[HistoryDiff]:
    """Newest first, as people read a history."""
    diffs = [entry_diff(entry) for entry in entries]
    return sorted(diffs, key=lambda d: d.changed_at or EARLIEST, reverse=True)
