"""Start the service: check the secret, lock the state dir, load every model once, then run uvicorn.

Models are loaded before the port opens, so a service that answers ``GET /`` is ready. One service per state
dir: a second one on the same folder stops with a clear message (an ``flock``, released by the operating system
when the process dies, even by SIGKILL). Library warnings (they may quote patient names) become redacted JSON
lines on stderr, as `run --log-json` writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from innereye_batch.errors import UsageError
from innereye_batch.service.auth import require_secret
from innereye_batch.service.options import ServeOptions

LOCK_FILE = ".innereye-batch-serve.lock"


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state dir for this process; UsageError when another service holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held while the service runs
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UsageError(f"state dir {state_dir} is in use by another innereye-batch serve ({holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def check_installed() -> None:
    """UsageError naming the extra when FastAPI, uvicorn or prometheus-client is missing."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"serve needs {', '.join(missing)}: pip install 'innereye-batch[serve]'")


def serve(options: ServeOptions) -> None:
    """Run the service until it is stopped (Ctrl-C or SIGTERM: uvicorn finishes the requests in flight)."""
    check_installed()
    import uvicorn

    from innereye_batch.pipeline.library_log import library_messages_to
    from innereye_batch.pipeline.progress import RunProgress
    from innereye_batch.service.app import build_service, create_app
    from innereye_batch.service.models import load_served_models

    secret = require_secret(options.api_secret, no_auth=options.no_auth, host=options.host)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("innereye_batch.service")
    with state_dir_lock(options.state_dir), library_messages_to(RunProgress(log_json=True)):
        models = load_served_models(options)
        for model_id, served in models.items():
            log.info("serving %s (%s, %s) on %s", model_id, served.package.name, served.task, served.device)
        if secret is None:
            log.warning("no authentication (--no-auth): only for a loopback host")
        app = create_app(build_service(options, models, secret))
        uvicorn.run(app, host=options.host, port=options.port, log_level="info", server_header=False)
