"""The output formats `run` can write, by name: each declares its file, the tasks it serves and how to write it.

A format is an ``OutputFormat`` defined as ``FORMAT`` in its own module of this package and listed once in
``_FORMAT_MODULES`` (in writing order); plug-ins add theirs with ``register_format``. The pipeline only iterates
over the registry: adding a format touches no pipeline code. Writers write exactly the path they are given (the
pipeline renames it into place and keeps the done records); ``needs`` lets a format refuse, at planning time, a
series that lacks what the format requires, so scan-time facts decide and `--dry-run` tells the truth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from innereye_batch import NOT_FOR_CLINICAL_USE
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import UsageError
from innereye_batch.model.spec import ModelPackage

_FORMAT_MODULES = ("nifti", "dicom_seg", "rtstruct", "preview", "predictions", "explanations")


@dataclass(frozen=True)
class WriterOptions:
    """Choices a run makes for its formats (command-line options), the same for every item."""

    seg_type: Literal["BINARY", "LABELMAP"] = "BINARY"
    """DICOM-SEG flavour: Segmentation Storage (BINARY) or Label Map Segmentation Storage (LABELMAP)."""
    clinical_marker: str = NOT_FOR_CLINICAL_USE
    """Put into the descriptions of DICOM outputs and onto previews; empty: no marker."""

    def __post_init__(self) -> None:
        if self.seg_type not in ("BINARY", "LABELMAP"):
            raise ValueError(f"seg_type must be BINARY or LABELMAP, got {self.seg_type!r}")
        marker = self.clinical_marker
        if len(marker) > 64 or not all(" " <= c <= "~" and c != "\\" for c in marker):
            raise ValueError(f"the marker must be at most 64 printable ASCII characters without '\\', got {marker!r}")


@dataclass(frozen=True)
class WriteContext:
    """What every writer may need besides the prediction."""

    package: ModelPackage
    tool_version: str
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per stage so far, writing of the outputs before this one included."""
    options: WriterOptions = field(default_factory=WriterOptions)


@dataclass(frozen=True)
class OutputFormat:
    """One output file per work item."""

    name: str
    """What ``--formats`` calls it, e.g. ``nifti``."""
    filename: str
    """File name in the item's output folder."""
    tasks: frozenset[str]
    """The tasks whose predictions it can write."""
    write: Callable[[Path, Any, WriteContext], None]
    """Writes the prediction to exactly the given path."""
    description: str
    needs: Callable[[SeriesInfo], str | None] | None = None
    """Why a series cannot get this output (checked when the run is planned), or None when it can."""
    summarises_outputs: bool = False
    """Written after every other format of the item, so that it can record their writing (predictions.json)."""
    needs_explanations: bool = False
    """Written only when the run computes explanations (``--explain``)."""
    default: bool = True
    """Part of the task's outputs when ``--formats`` is not given."""


_registered: dict[str, OutputFormat] = {}


def register_format(output: OutputFormat) -> None:
    """Add a format (a plug-in, or a test's) to the registry; a name can be registered once."""
    formats = registered_formats()
    if output.name in formats:
        raise ValueError(f"output format {output.name!r} is already registered")
    _registered[output.name] = output


def unregister_format(name: str) -> None:
    """Remove a format added with ``register_format``."""
    _registered.pop(name, None)


def registered_formats() -> dict[str, OutputFormat]:
    """Every format by name, in writing order (formats that summarise the others last)."""
    if not _registered:
        for module in _FORMAT_MODULES:
            found = importlib.import_module(f"innereye_batch.writers.{module}")
            for output in getattr(found, "FORMATS", None) or (found.FORMAT,):
                _registered[output.name] = output
    ordered = sorted(_registered.values(), key=lambda f: f.summarises_outputs)
    return {f.name: f for f in ordered}


def formats_for_task(task: str) -> tuple[OutputFormat, ...]:
    """The formats that can write ``task``'s predictions, in writing order."""
    return tuple(f for f in registered_formats().values() if task in f.tasks)


def resolve_formats(requested: Sequence[str], task: str, *, explaining: bool = False) -> tuple[OutputFormat, ...]:
    """The requested formats (the task's default ones when empty), in writing order; UsageError for unknown ones
    and for explanation outputs without ``explaining``."""
    available = formats_for_task(task)
    if not requested:
        return tuple(f for f in available if f.default and (explaining or not f.needs_explanations))
    names = {f.name for f in available}
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise UsageError(
            f"unknown output format(s) {', '.join(unknown)} for a {task} model; choose from {', '.join(sorted(names))}"
        )
    chosen = tuple(f for f in available if f.name in requested)
    unexplained = [f.name for f in chosen if f.needs_explanations and not explaining]
    if unexplained:
        raise UsageError(f"output format(s) {', '.join(unexplained)} need explanations: add --explain gradcam")
    return chosen
