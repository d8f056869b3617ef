"""The shared secret as InnerEye's API uses it: header ``API_AUTH_SECRET``, compared in constant time.

The secret comes from the environment variable ``INNEREYE_BATCH_API_SECRET`` or from ``--api-secret-file``. The
service refuses to start without one, unless ``--no-auth`` is given and it listens on a loopback address only.
A request without the header gets 401, one with a wrong value 403 (as InnerEye answers).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from innereye_batch.errors import UsageError

HEADER = "API_AUTH_SECRET"
ENVIRONMENT_VARIABLE = "INNEREYE_BATCH_API_SECRET"


def read_secret(secret_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The secret from ``secret_file`` (surrounding whitespace removed), else from the environment, else None.

    UsageError for a file that cannot be read or holds nothing, or for both sources at once (which one wins
    would be a guess)."""
    environ = dict(os.environ) if environ is None else environ
    from_env = environ.get(ENVIRONMENT_VARIABLE)
    if secret_file is None:
        if from_env is not None and not from_env.strip():
            raise UsageError(f"the environment variable {ENVIRONMENT_VARIABLE} is set but empty")
        return from_env.strip() if from_env else None
    if from_env:
        raise UsageError(f"give the secret either in {ENVIRONMENT_VARIABLE} or with --api-secret-file, not both")
    try:
        secret = secret_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--api-secret-file {secret_file}: cannot be read ({type(error).__name__})") from None
    if not secret:
        raise UsageError(f"--api-secret-file {secret_file}: the file is empty")
    return secret


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for every other host, including
    the wildcard addresses 0.0.0.0 and ::."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_secret(secret: str | None, *, no_auth: bool, host: str) -> str | None:
    """The secret the service checks (None: no checks); UsageError where the service must not start."""
    if no_auth:
        if not is_loopback(host):
            raise UsageError(
                f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), not {host!r}: "
                "anyone who reaches the port could run the models and read results"
            )
        return None
    if not secret:
        raise UsageError(
            f"no API secret: set {ENVIRONMENT_VARIABLE} or give --api-secret-file "
            "(or --no-auth, on a loopback host only)"
        )
    return secret


def check(header_value: str | None, secret: str | None) -> int | None:
    """The status a request gets for its ``API_AUTH_SECRET`` header: None (allowed), 401 (missing) or 403
    (wrong). The comparison takes the same time wherever the values differ."""
    if secret is None:
        return None
    if header_value is None:
        return 401
    # headers arrive as latin-1 text; compare bytes so that any value is comparable in constant time
    if not hmac.compare_digest(header_value.encode("latin-1", "replace"), secret.encode("utf-8")):
        return 403
    return None
