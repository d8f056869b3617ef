"""Messages of the libraries a run uses (highdicom, pydicom, warnings) routed through the run's own log.

Libraries quote the values they complain about, patient names included (highdicom warns about a PatientName
without a caret by quoting it). During a run their warnings and log records become ``library_warning`` events
with quoted values redacted and paths made relative to the input folder; each distinct message is reported
once. Nothing reaches stderr behind the run's back, with --quiet nothing at all.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from innereye_batch.pipeline.progress import RunProgress
from innereye_batch.text import printable, redact_quoted, relative_paths

LIBRARY_LOGGERS = ("py.warnings", "highdicom", "pydicom", "nibabel")
_WARNING_PREFIX = re.compile(r"^.*?:\d+: (?=\w+(Warning|Error)\b)")


class _ToProgress(logging.Handler):
    """Sends each distinct, redacted library message to the run's progress once."""

    def __init__(self, progress: RunProgress, root: Path | None) -> None:
        super().__init__(level=logging.WARNING)
        self.progress = progress
        self.root = root
        self.seen: set[str] = set()
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        source = record.name if record.name != "py.warnings" else "warnings"
        try:
            # the first line only: a quoted value cut by a line break (a name holding one) is redacted to its end
            text = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
            if source == "warnings":  # "<file>:<line>: UserWarning: ..." -> "UserWarning: ..."
                text = _WARNING_PREFIX.sub("", text)
            message = redact_quoted(relative_paths(printable(text), self.root))
        except Exception:  # a message that cannot even be formatted is not worth a crash
            message = f"unformattable message from {record.name}"
        with self.guard:
            if message in self.seen:
                return
            self.seen.add(message)
        self.progress.event("library_warning", source=source, message=f"{source}: {message}")


@contextlib.contextmanager
def library_messages_to(progress: RunProgress, root: Path | None = None) -> Iterator[None]:
    """Within the block, library warnings and log records go to ``progress`` only (redacted, once each)."""
    handler = _ToProgress(progress, root)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    logging.captureWarnings(True)
    try:
        for lg in loggers:
            lg.handlers = [handler]
            lg.propagate = False
            if lg.level == logging.NOTSET or lg.level > logging.WARNING:
                lg.setLevel(logging.WARNING)
        yield
    finally:
        logging.captureWarnings(False)
        for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            lg.handlers = handlers
            lg.propagate = propagate
            lg.setLevel(level)
