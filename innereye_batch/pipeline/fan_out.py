"""One segmentation's output files written side by side by the writer processes, not one after another.

A 300-slice series' DICOM-SEG and RT Structure Set, each read back and checked, take seconds apiece on one core.
In one writer process they follow each other, and the last series of a GPU run keeps the run waiting for the sum
while the device idles. With two or more writer processes, a segmentation's outputs are written in three steps
(the same functions as ``process.write_outputs`` runs in one process, so the same files and the same rules):

1. one process finishes the prediction (connected components, structure sizes) and clears the item's folder
   (``process.prepare_outputs``); it leaves the label map there, in a temporary ``.npy`` file;
2. one task per file format maps that label map read-only and writes its file (``process.write_format``); the
   tasks run in as many processes as are free;
3. when every file is in place, one process writes the summarising formats and the done record
   (``process.finish_outputs``). The temporary file is removed whatever happened.

A format that fails fails the item, and the files its siblings wrote are removed, as in one process. A writer
process that dies breaks the pool: the whole item is then written again alone (the writer pool's retry). A step
that outlives the write timeout (``writer_pool.call_within``: each step is given the whole of it) is raised to the
writer pool, which fails the item and kills the writer process that gave up on it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from innereye_batch.files import TEMP_PREFIX
from innereye_batch.model.spec import ModelPackage
from innereye_batch.pipeline.process import Job, failed_writing, finish_outputs, prepare_outputs, write_format
from innereye_batch.results import ItemResult
from innereye_batch.tasks.base import Prediction
from innereye_batch.writers.registry import OutputFormat, WriterOptions

Submit = Callable[..., "Future[Any]"]
"""Submits a call to the writer processes: ``submit(function, *args)``."""


def fans_out(prediction: Prediction, formats: Sequence[OutputFormat]) -> bool:
    """Whether ``prediction``'s outputs are worth writing side by side: a segmentation (its label map is the one
    large thing the steps share) with two files or more."""
    files = [output for output in formats if not output.summarises_outputs]
    return prediction.task == "segmentation" and len(files) > 1


def write_fanned_out(
    submit: Submit,
    job: Job,
    prediction: Prediction,
    formats: Sequence[OutputFormat],
    package: ModelPackage,
    model_fp: str,
    timings: dict[str, float],
    options: WriterOptions,
) -> ItemResult:
    """Write ``prediction``'s outputs in the writer processes, each file in a task of its own (see the module);
    blocks until the item's result. Raises ``BrokenProcessPool`` when a writer process died meanwhile, and
    ``WriteTimeout`` when a step was given up on at its deadline (``submit`` of the writer pool gives each one)."""
    from innereye_batch.pipeline.writer_pool import WriteTimeout  # here: the writer pool imports this module

    prepared = submit(_prepare, job, prediction, model_fp, timings).result()
    if isinstance(prepared, ItemResult):
        return prepared
    bare, labels_file, timings = prepared
    futures: list[Future[Any]] = []
    try:
        start = time.perf_counter()
        files = [output for output in formats if not output.summarises_outputs]
        for output in files:
            futures.append(submit(_write_file, job, bare, labels_file, output, package, timings, options))
        wait(futures)
        errors = [future.exception() for future in futures]
        stopped = [error for error in errors if isinstance(error, (BrokenProcessPool, WriteTimeout))]
        if stopped:  # the writer pool's to handle: the item is tried again alone, or fails with the deadline
            raise stopped[0]
        outcomes = list(zip(files, futures, errors, strict=True))
        written = {f.name: future.result() for f, future, error in outcomes if error is None}
        failed = [(f.name, error) for f, _, error in outcomes if error is not None]
        if failed:  # the first in writing order, as one process would have reported it
            return failed_writing(job, failed[0][0], failed[0][1], written.values(), timings)
        summaries = [output for output in formats if output.summarises_outputs]
        seconds = time.perf_counter() - start
        arguments = (job, bare, labels_file, summaries, written, package, model_fp, timings, seconds, options)
        futures.append(submit(_finish, *arguments))
        result: ItemResult = futures[-1].result()
        return result
    finally:
        wait(futures)  # leaving early (a submission refused): no task may still read the file, or write its own
        labels_file.unlink(missing_ok=True)


def _prepare(
    job: Job, prediction: Prediction, model_fp: str, timings: dict[str, float]
) -> tuple[Prediction, Path, dict[str, float]] | ItemResult:
    """Step 1, in a writer process: the finished prediction without its label map, the file holding that map
    (in the item's folder, a temporary name a later run removes if this one is killed), and the timings."""
    prepared = prepare_outputs(job, prediction, model_fp, timings)
    if isinstance(prepared, ItemResult):
        return prepared
    finished, timings = prepared
    labels: np.ndarray = finished.labels  # type: ignore[attr-defined]
    path = job.folder / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}-labels.npy"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, labels, allow_pickle=False)
    except Exception as error:
        path.unlink(missing_ok=True)
        return failed_writing(job, "the label map for the writers", error, (), timings)
    return _replace_labels(finished, np.empty((0, 0, 0), np.uint8)), path, timings


def _with_labels(bare: Prediction, labels_file: Path) -> Prediction:
    """The finished prediction again, its label map mapped read-only from ``labels_file`` (a writer that tried
    to change it would fail, not change what its siblings read)."""
    return _replace_labels(bare, np.load(labels_file, mmap_mode="r", allow_pickle=False))


def _replace_labels(prediction: Any, labels: np.ndarray) -> Prediction:
    replaced: Prediction = dataclasses.replace(prediction, labels=labels)
    return replaced


def _write_file(
    job: Job,
    bare: Prediction,
    labels_file: Path,
    output: OutputFormat,
    package: ModelPackage,
    timings: dict[str, float],
    options: WriterOptions,
) -> Path:
    """Step 2, in a writer process: one format's file."""
    return write_format(job, _with_labels(bare, labels_file), output, package, timings, options)


def _finish(
    job: Job,
    bare: Prediction,
    labels_file: Path,
    summaries: Sequence[OutputFormat],
    written: dict[str, Path],
    package: ModelPackage,
    model_fp: str,
    timings: dict[str, float],
    seconds_written: float,
    options: WriterOptions,
) -> ItemResult:
    """Step 3, in a writer process: the summarising formats and the done record."""
    prediction = _with_labels(bare, labels_file)
    return finish_outputs(job, prediction, summaries, written, package, model_fp, timings, seconds_written, options)
