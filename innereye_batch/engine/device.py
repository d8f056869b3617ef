"""Turn a ``--device`` option (auto, cpu, cuda, cuda:N) into a torch.device, refusing what this machine lacks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from innereye_batch.errors import UsageError

if TYPE_CHECKING:
    import torch

_CUDA_NAME = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str) -> torch.device:
    """The device for ``name``: ``auto`` (CUDA device 0 when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises UsageError when CUDA is asked for but unavailable, or when the index names no device here.
    """
    import torch

    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA_NAME.match(text)
    if match is None:
        raise UsageError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N (N a GPU index)")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {name!r} asks for a CUDA GPU, but torch {torch.__version__} sees none on this machine "
            "(no NVIDIA driver, or a CPU-only torch build); use --device cpu or --device auto"
        )
    index = int(match.group(1)) if match.group(1) is not None else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"--device {name!r}: this machine has {count} CUDA device(s), indices 0..{count - 1}")
    return torch.device("cuda", index)
