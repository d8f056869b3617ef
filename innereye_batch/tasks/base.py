"""The contract between the pipeline and a task: WorkItem in, Prediction out, through a Predictor.

- ``WorkItem``: the scanned series that feed one inference (one per model channel).
- ``Predictor``: the loaded networks of a model on one device. ``decoder`` is a picklable function that turns a
  WorkItem into host tensors (it runs in DataLoader workers and must not touch the networks); ``predict`` runs
  the model on the device and returns the task's Prediction.
- ``Prediction``: a typed result per task; ``findings()`` gives what the run's summary keeps of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from innereye_batch.dicom.series import SeriesInfo


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

    def findings(self) -> dict[str, Any]:
        """The fields of ``results.ItemResult`` this prediction fills (structures, probabilities, ...)."""
        ...


class Predictor(Protocol):
    """A model loaded on one device, for one task."""

    task: ClassVar[str]

    @property
    def decoder(self) -> Callable[[WorkItem], Decoded]:
        """Picklable: WorkItem -> host tensors; runs in DataLoader workers."""
        ...

    def predict(self, item: WorkItem, decoded: Decoded | None = None) -> Prediction:
        """Predict one work item; ``decoded`` is the decoder's output (decoded here when None)."""
        ...
