"""`--devices`: which devices get a model replica, and the per-thread device context each replica runs under.

``0,1`` (GPU indices), ``cuda:0,cuda:1``, ``cpu,cpu`` (two replicas on the CPU: the same mechanism, testable
without a GPU) or ``all`` (every visible GPU). Without ``--devices``, ``--device auto`` means every visible GPU
when there are several, and ``--device X`` one replica on X.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from innereye_batch.errors import UsageError

if TYPE_CHECKING:
    import torch


def parse_devices(names: Sequence[str]) -> list[torch.device]:
    """The devices of ``--devices`` (already split at commas), checked against this machine."""
    import torch

    from innereye_batch.engine.device import resolve_device

    if [n.strip().lower() for n in names] == ["all"]:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"--devices all: torch {torch.__version__} sees no CUDA GPU on this machine; name devices, "
                "e.g. --devices cpu"
            )
        return [torch.device("cuda", i) for i in range(count)]
    devices = []
    for name in names:
        text = name.strip().lower()
        if text == "all":
            raise UsageError("--devices all cannot be combined with other devices")
        if text == "auto":
            raise UsageError("--devices takes GPU indices, cuda:N or cpu (for --device auto, leave --devices out)")
        devices.append(resolve_device(f"cuda:{text}" if text.isdigit() else text))
    if not devices:
        raise UsageError("--devices names no device")
    return devices


def run_devices(device: str, devices: Sequence[str]) -> list[torch.device]:
    """The replicas' devices from ``--device`` and ``--devices``: one per named device; without ``--devices``,
    every visible GPU for ``--device auto`` when there are several, else the one ``--device``."""
    import torch

    from innereye_batch.engine.device import resolve_device

    if devices:
        if device.strip().lower() != "auto":
            raise UsageError(f"--device {device} and --devices {','.join(devices)}: give one of them")
        return parse_devices(devices)
    if device.strip().lower() == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [resolve_device(device)]


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """For a replica's thread: ``device`` as the current CUDA device and a CUDA stream of the replica's own, so
    replicas (also two on one GPU) never queue work on each other's streams. Nothing to do on the CPU."""
    import torch

    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
        yield
