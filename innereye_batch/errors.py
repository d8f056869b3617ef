"""One small hierarchy of errors; every message names the file or series and the reason."""

from __future__ import annotations

import re

# Process exit codes used by the CLI.
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class InnerEyeBatchError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = EXIT_SOME_FAILED


class DicomError(InnerEyeBatchError):
    """A DICOM file or series cannot be read or turned into a volume."""


class SeriesError(DicomError):
    """A whole series is unusable (missing slices, inconsistent geometry, bad pixel data)."""

    def __init__(self, series_uid: str, reason: str) -> None:
        super().__init__(f"series {series_uid}: {reason}")
        self.series_uid = series_uid
        self.reason = reason


class ModelFolderError(InnerEyeBatchError):
    """The registered model folder is missing something or holds something invalid."""

    exit_code = EXIT_USAGE


class CheckpointError(ModelFolderError):
    """A checkpoint cannot be loaded safely or does not match the architecture."""


class UsageError(InnerEyeBatchError):
    """The command line asks for something impossible (bad option values, missing folders)."""

    exit_code = EXIT_USAGE


class OutputLockedError(InnerEyeBatchError):
    """Another run holds the output folder's lock."""

    exit_code = EXIT_USAGE


def error_text(error: BaseException) -> str:
    """``Type: message`` of an exception for a summary's reason: one line, without the traceback that some
    libraries fold into their messages (pydicom's write errors carry the one of the error they wrap). A
    library's message has its quoted values redacted: libraries quote the values they fail on, a patient's birth
    date or name included; this package's own errors quote only what it chose to show."""
    from innereye_batch.text import redact_quoted

    message = str(error).split("\nTraceback (most recent call last):", 1)[0]
    message = " ".join(message.split())
    missing = re.search(r"has no attribute '(\w+)'$", message) if isinstance(error, AttributeError) else None
    if missing and _is_dicom_keyword(missing.group(1)):  # a keyword is no patient's value: say which one
        message = f"the DICOM attribute {missing.group(1)} is missing"
    elif not isinstance(error, InnerEyeBatchError):
        message = redact_quoted(message)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _is_dicom_keyword(word: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(word) is not None
