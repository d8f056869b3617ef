"""One case of the hostile corpus: the input it writes is elsewhere; here is what a correct run reports for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.config import IGNORE, settings


@dataclass(frozen=True)
class Case:
    """One hostile input and what a correct run reports for it."""

    name: str
    rule: str
    """The rule of issue 14 it exercises."""
    series_instance_uid: str
    """As the summary stores it (printable)."""
    status: str
    reason_has: tuple[str, ...] = ()
    """Phrases the reason must contain."""
    key: str | None = None
    """The exact key of its row, where one SeriesInstanceUID has several (split series)."""
    key_prefix: str | None = None
    """Its row is the one other row whose key starts with this (a part whose suffix is not fixed in advance)."""

    def row(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Its row among summary.json's series records, or None."""
        mine = [r for r in rows if r["series_instance_uid"] == self.series_instance_uid]
        if self.key is not None:
            mine = [r for r in mine if r["key"] == self.key]
        elif self.key_prefix is not None:
            mine = [r for r in mine if r["key"].startswith(self.key_prefix)]
        return mine[0] if len(mine) == 1 else None


@contextlib.contextmanager
def lenient_writing() -> Iterator[None]:
    """Let pydicom write the invalid values a hostile file carries."""
    saved = settings.writing_validation_mode
    settings.writing_validation_mode = IGNORE
    try:
        yield
    finally:
        settings.writing_validation_mode = saved
