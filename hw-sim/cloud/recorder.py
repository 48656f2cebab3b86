"""Counts the records the cloud received, by their stable id: what was lost, what came twice."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorder:
    counts: Counter[int] = field(default_factory=Counter)
    records: list[dict[str, Any]] = field(default_factory=list)
    messages: int = 0
    malformed: int = 0
    keep_records: bool = True

    def feed(self, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            self.messages += 1
            self.malformed += 1
            return
        self.feed_items(doc if isinstance(doc, list) else [doc])

    def feed_items(self, items: list[Any]) -> None:
        """One message's records, already decoded (a stand-in that reads its own format)."""
        self.messages += 1
        try:
            for rec in items:
                self.counts[int(rec["id"])] += 1
                if self.keep_records:
                    self.records.append(rec)
        except (ValueError, KeyError, TypeError):
            self.malformed += 1

    @property
    def unique(self) -> int:
        return len(self.counts)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values() if n > 1)

    def missing(self, expected_ids: set[int]) -> set[int]:
        return expected_ids - self.counts.keys()

    def report(self, expected_ids: set[int]) -> str:
        lost = len(self.missing(expected_ids))
        return f"{len(expected_ids)} sent, {lost} lost, {self.duplicates} duplicated"
