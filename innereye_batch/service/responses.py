"""InnerEye's error bodies and empty answers, so that a client of InnerEye-Inference reads ours unchanged.

An error is JSON ``{"code": "NOT_FOUND", "detail": "...", "status": 404, "title": "ResourceNotFound"}`` with
InnerEye's texts per status, plus ``extra_details`` (``InvalidModelId``, ``InvalidZipFile``, ``InvalidRunId``,
``RunCancelled``) where InnerEye gives one; InnerEye leaves the key out otherwise. Beyond InnerEye, ``reason``
says what exactly was wrong (text from the request is escaped, never interpreted).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from innereye_batch.service.auth import HEADER
from innereye_batch.text import printable


class ExtraDetails(str, Enum):
    """InnerEye's ``extra_details`` values."""

    INVALID_MODEL_ID = "InvalidModelId"
    INVALID_ZIP_FILE = "InvalidZipFile"
    RUN_CANCELLED = "RunCancelled"
    INVALID_RUN_ID = "InvalidRunId"


_ERRORS: dict[int, tuple[str, str, str]] = {
    # status: (code, title, detail), as InnerEye-Inference words them
    400: ("BAD_REQUEST", "InvalidInput", "Input file is not in correct format."),
    401: (
        "UNAUTHORIZED",
        "NoAuthenticationInformation",
        f"Server failed to authenticate the request. Make sure the value of the {HEADER} header is populated.",
    ),
    403: (
        "FORBIDDEN",
        "AuthenticationFailed",
        f"Server failed to authenticate the request. Make sure the value of the {HEADER} header is correct.",
    ),
    404: ("NOT_FOUND", "ResourceNotFound", "The specified resource does not exist."),
    405: ("METHOD_NOT_ALLOWED", "MethodNotAllowed", "The resource does not support this method."),
    500: (
        "INTERNAL_SERVER_ERROR",
        "InternalError",
        "The server encountered an internal error. Please retry the request.",
    ),
    503: (  # not one of InnerEye's: the queue or the disk is full, Retry-After says when to try again
        "SERVICE_UNAVAILABLE",
        "ServerBusy",
        "The server is currently unable to receive requests. Please retry your request.",
    ),
}


def error_body(status: int, extra_details: ExtraDetails | None = None, reason: str = "") -> dict[str, Any]:
    """The JSON body of an error answer with ``status`` (one of 400, 401, 403, 404, 405, 500, 503)."""
    code, title, detail = _ERRORS[status]
    body: dict[str, Any] = {"code": code, "detail": detail, "status": status, "title": title}
    if extra_details is not None:
        body["extra_details"] = extra_details.value
    if reason:
        body["reason"] = printable(reason)
    return body


class ApiError(Exception):
    """Raised by a handler to answer with InnerEye's error body."""

    def __init__(
        self,
        status: int,
        extra_details: ExtraDetails | None = None,
        reason: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.extra_details = extra_details
        self.reason = reason
        self.headers = headers
        """Headers of the answer (``Retry-After``)."""

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.extra_details, self.reason)


EMPTY_MEDIA_TYPE = "text/html; charset=utf-8"
"""InnerEye (Flask) answers ping and a pending result with an empty body of this type."""
