"""The contract between the pipeline and a task: WorkItem in, Prediction out, through a Predictor.

- ``WorkItem``: the scanned series that feed one inference (one per model channel).
- ``Predictor``: the loaded networks of a model on one device. ``decoder`` is a picklable function that turns a
  WorkItem into host tensors (it runs in DataLoader workers and must not touch the networks); ``predict`` runs
  the model on the device and returns the task's Prediction.
- ``Prediction``: a typed result per task; ``findings()`` gives what the run's summary keeps of it.
- ``Task``: what the pipeline asks of a task: which discovered series become its work items, and its predictor
  for loaded networks (``tasks/__init__.py`` lists the tasks by name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from innereye_batch.dicom.series import SeriesInfo

if TYPE_CHECKING:
    import torch

    from innereye_batch.model.spec import ModelPackage


@dataclass(frozen=True)
class WorkItem:
    """The series that feed one inference: one per model channel, in channel order."""

    inputs: tuple[SeriesInfo, ...]

    @property
    def primary(self) -> SeriesInfo:
        """The first channel's series: its grid is the output grid and its key names the output folder."""
        return self.inputs[0]

    @property
    def key(self) -> str:
        """The item's unique name in a run (the primary series' key)."""
        return self.primary.key


@runtime_checkable
class Decoded(Protocol):
    """Host tensors of one work item, as a decoder returns them."""

    def pin_memory(self) -> Decoded:
        """The same data in page-locked memory (for fast, asynchronous copies to a GPU)."""
        ...


class Prediction(Protocol):
    """What a model predicted for one work item."""

    task: ClassVar[str]

    @property
    def item(self) -> WorkItem:
        """The work item predicted."""
        ...

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage spent by the predictor (preprocess, infer, postprocess, ...)."""
        ...

    @property
    def peak_memory_gib(self) -> dict[str, float]:
        """Peak memory of the device work that made it, GiB: ``host``, ``cuda:N`` (``engine.memory``)."""
        ...

    def findings(self) -> dict[str, Any]:
        """The fields of ``results.ItemResult`` this prediction fills (structures, probabilities, ...)."""
        ...

    def finished(self) -> Prediction:
        """The prediction with any CPU work left by the device loop done (called in the writers' thread)."""
        ...


@dataclass(frozen=True)
class Unmatched:
    """A series (or study) that cannot run, with the reason; reported as ``skipped`` or ``failed``."""

    series: SeriesInfo
    reason: str
    failed: bool


@dataclass(frozen=True)
class PredictorOptions:
    """How a predictor runs, whatever its task (each task uses what applies to it)."""

    patch_batch: int = 0
    """Segmentation: sliding-window patches per forward pass; 0 chooses from the device."""
    batch_size: int = 16
    """Classification: images per forward pass."""
    amp: bool = False
    explain: tuple[str, ...] = ()
    """Classification: explanation methods to compute (``engine.explain.EXPLAIN_METHODS``)."""
    gpu_memory_gib: float | None = None
    """What torch may allocate on a GPU, GiB (``engine.memory.limit_device_memory``); None: all it has."""


class Predictor(Protocol):
    """A model loaded on one device, for one task."""

    task: ClassVar[str]

    @property
    def batch_size(self) -> int:
        """How many loaded items ``predict_batch`` takes at once (1: one at a time)."""
        ...

    @property
    def decoder(self) -> Callable[[WorkItem], Decoded]:
        """Picklable: WorkItem -> host tensors; runs in DataLoader workers."""
        ...

    def predict(self, item: WorkItem, decoded: Decoded | None = None) -> Prediction:
        """Predict one work item, finished; ``decoded`` is the decoder's output (decoded here when None)."""
        ...

    def predict_batch(self, items: Sequence[WorkItem], decoded: Sequence[Decoded]) -> list[Prediction]:
        """Device work for several loaded items at once (at most ``batch_size``), in order; the predictions may
        still need ``finished()``, which the pipeline calls off the device loop."""
        ...


class Task(Protocol):
    """A kind of model (segmentation, classification): its work items and its predictor."""

    name: str

    def plan_items(self, series: Sequence[SeriesInfo], package: ModelPackage) -> tuple[list[WorkItem], list[Unmatched]]:
        """The work items the discovered ``series`` give this model, and the series it cannot take (why)."""
        ...

    def predictor(
        self, package: ModelPackage, networks: list[torch.nn.Module], device: torch.device, options: PredictorOptions
    ) -> Predictor:
        """The predictor of ``package`` for loaded ``networks`` on ``device``."""
        ...
