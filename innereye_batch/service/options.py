"""What `innereye-batch serve` accepts: the models and their ids, limits on uploads, batching, where state lives."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from innereye_batch.errors import UsageError
from innereye_batch.pipeline.plan import DEFAULT_MAX_VOXELS
from innereye_batch.writers.registry import WriterOptions

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""A model id as InnerEye names registered models (``PassThroughModel:1729``): safe in a URL path segment."""
DEFAULT_VERSION = "1"
"""A model folder served without an explicit id is served as ``<model_name>:1``."""


@dataclass(frozen=True)
class ModelSource:
    """One ``--model`` option: a model folder, and the id it is served under (None: ``<model_name>:1``)."""

    folder: Path
    model_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSource:
        """``DIR`` or ``ID=DIR``; UsageError for an id that is not ``MODEL_ID``."""
        model_id, separator, folder = text.partition("=")
        if not separator:
            return cls(Path(text))
        if not MODEL_ID.fullmatch(model_id):
            raise UsageError(
                f"--model {text!r}: the id {model_id!r} must be letters, digits and . _ : - (at most 128), "
                "e.g. Prostate:3=final_model/"
            )
        return cls(Path(folder), model_id)


def default_model_id(model_name: str) -> str:
    """``<model_name>:1``, with characters a URL path segment cannot carry replaced by ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", model_name)[:120] or "model"
    return f"{name}:{DEFAULT_VERSION}"


@dataclass(frozen=True)
class UploadLimits:
    """Limits on what a client may send; an upload over any of them is refused before extraction."""

    max_upload_bytes: int = 1024 * 2**20
    """Largest request body (a zip for /start, one DICOM file for /predict)."""
    max_unzipped_bytes: int = 8 * 2**30
    """Largest total uncompressed size the zip's members declare."""
    max_ratio: float = 200.0
    """Largest compression ratio (uncompressed / compressed) of the whole zip, and of any member over 1 MiB."""
    max_members: int = 100_000


@dataclass(frozen=True)
class ServeOptions:
    """Everything `innereye-batch serve` accepts."""

    models: tuple[ModelSource, ...]
    host: str = "127.0.0.1"
    port: int = 5000
    state_dir: Path = Path("innereye-batch-state")
    api_secret: str | None = None
    """None only together with ``no_auth`` (checked by ``auth.require_secret``)."""
    no_auth: bool = False
    device: str = "auto"
    amp: bool = False
    patch_batch: int = 0
    """Sliding-window patches per forward pass; 0 = auto."""
    gpu_memory_gib: float | None = None
    """What torch may allocate on the GPU, GiB (None: all it has)."""
    trust_checkpoint: bool = False
    max_batch: int = 16
    """Real-time predict: most images per forward pass."""
    max_wait_ms: float = 10.0
    """Real-time predict: longest a request waits for others to fill its batch."""
    keep_results_hours: float = 24.0
    """A finished job's outputs are deleted this long after it ended."""
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_voxels: int = DEFAULT_MAX_VOXELS
    writer_options: WriterOptions = field(default_factory=WriterOptions)
    max_attempts: int = 3
    """A job interrupted this many times (the service killed while running it) is cancelled, not retried."""
    max_queued_jobs: int = 100
    """Jobs waiting to run (uploads being received included); a further upload is answered 503 with Retry-After."""

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("serve needs at least one --model")
        if self.max_batch < 1:
            raise UsageError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms must not be negative, got {self.max_wait_ms}")
        if self.keep_results_hours <= 0:
            raise UsageError(f"--keep-results must be a positive number of hours, got {self.keep_results_hours}")
        if self.max_queued_jobs < 1:
            raise UsageError(f"--max-queued-jobs must be at least 1, got {self.max_queued_jobs}")
        if self.limits.max_upload_bytes < 1:
            raise UsageError("--max-upload-mb must be positive")
        if not 0 < self.port < 65536:
            raise UsageError(f"--port must be 1..65535, got {self.port}")
