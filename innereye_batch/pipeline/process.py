"""One work item end to end, and its outputs: decode, predict, write every format, then the done record.

``write_outputs`` is the writer-pool half of a run; ``process_item`` chains decoder, predictor and writers for
one item in the calling thread, for the bench, the tests and a service, with the same outputs as ``run``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innereye_batch import __version__
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import error_text
from innereye_batch.files import atomic_write
from innereye_batch.model.spec import ModelPackage
from innereye_batch.results import ItemResult, Status
from innereye_batch.tasks.base import Decoded, Prediction, Predictor, WorkItem
from innereye_batch.writers.registry import OutputFormat, WriteContext, WriterOptions


@dataclass(frozen=True)
class Job:
    """A planned work item: where its outputs go and the fingerprint of its inputs. ``changed_outputs``: the files
    of a done result whose content changed since they were written (``--verify-outputs``), redone for that."""

    item: WorkItem
    folder: Path
    input_fp: str
    changed_outputs: tuple[str, ...] = ()


def item_result(series: SeriesInfo, status: Status, reason: str = "", **extra: Any) -> ItemResult:
    """The result record of the item whose primary series is ``series``."""
    return ItemResult(
        key=series.key,
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        modality=series.modality,
        status=status,
        reason=reason,
        **extra,
    )


def write_outputs(
    job: Job,
    prediction: Prediction,
    formats: Sequence[OutputFormat],
    package: ModelPackage,
    model_fp: str,
    timings: dict[str, float],
    options: WriterOptions = WriterOptions(),  # the run's format options (--seg-type, ...)
) -> ItemResult:
    """Write every format atomically, then the done record; any failure fails the item, never the run.

    A failed item keeps no output: files written before the failure are removed, so no output ever lies in a
    folder without the done record that vouches for it. The three steps (``prepare_outputs``, ``write_format``
    per file, ``finish_outputs``) are also run apart, in several writer processes at once (``pipeline.fan_out``).
    """
    prepared = prepare_outputs(job, prediction, model_fp, timings)
    if isinstance(prepared, ItemResult):
        return prepared
    prediction, timings = prepared
    start = time.perf_counter()
    written: dict[str, Path] = {}
    files = [output for output in formats if not output.summarises_outputs]
    for output in files:
        try:
            written[output.name] = write_format(job, prediction, output, package, timings, options)
        except Exception as error:
            return failed_writing(job, output.name, error, written.values(), timings)
    summaries = [output for output in formats if output.summarises_outputs]
    seconds = time.perf_counter() - start
    return finish_outputs(job, prediction, summaries, written, package, model_fp, timings, seconds, options)


def prepare_outputs(
    job: Job, prediction: Prediction, model_fp: str, timings: dict[str, float]
) -> tuple[Prediction, dict[str, float]] | ItemResult:
    """The prediction with its CPU post-processing done and the run's timings with its own, and the item's folder
    cleared of any earlier result; or the failed result."""
    from innereye_batch.pipeline.state import clear_stale_result, mark_not_done, with_problem

    try:
        prediction = prediction.finished()  # the CPU work the device loop left (connected components, sizes)
    except Exception as error:
        result = item_result(job.item.primary, "failed", f"post-processing: {error_text(error)}", timings=timings)
        return with_problem(result, clear_stale_result(job.folder, job.input_fp, model_fp))
    timings = {**timings, **{k: v for k, v in prediction.timings.items() if k not in timings}}
    try:
        mark_not_done(job.folder)
    except Exception as error:
        return failed_writing(job, "outputs", error, (), timings)
    return prediction, timings


def write_format(
    job: Job,
    prediction: Prediction,
    output: OutputFormat,
    package: ModelPackage,
    timings: dict[str, float],
    options: WriterOptions,
) -> Path:
    """Write one format's file of a finished prediction into the item's folder, atomically; its path."""
    context = WriteContext(package=package, tool_version=__version__, timings=timings, options=options)
    path = job.folder / output.filename
    atomic_write(path, functools.partial(_write_one, output, prediction, context))
    return path


def finish_outputs(
    job: Job,
    prediction: Prediction,
    summaries: Sequence[OutputFormat],
    written: dict[str, Path],
    package: ModelPackage,
    model_fp: str,
    timings: dict[str, float],
    seconds_written: float,
    options: WriterOptions,
) -> ItemResult:
    """After every file of ``written`` is in place (which took ``seconds_written``): the formats that summarise
    them, then the done record; the item's result."""
    from innereye_batch.pipeline.state import mark_done

    start = time.perf_counter() - seconds_written
    written = dict(written)
    step = "the done record"
    try:
        for output in summaries:
            step = output.name
            timings = {**timings, "write": time.perf_counter() - start}
            written[output.name] = write_format(job, prediction, output, package, timings, options)
        step = "the done record"
        timings = {**timings, "write": time.perf_counter() - start}
        mark_done(job.folder, job.input_fp, model_fp, written, prediction.findings())
    except Exception as error:
        return failed_writing(job, step, error, written.values(), timings)
    outputs = {name: str(path.relative_to(job.folder.parent)) for name, path in written.items()}
    return item_result(
        job.item.primary,
        "ok",
        timings=timings,
        outputs=outputs,
        peak_memory_gib=dict(prediction.peak_memory_gib),
        **prediction.findings(),
    )


def failed_writing(
    job: Job, step: str, error: BaseException, written: Iterable[Path], timings: dict[str, float]
) -> ItemResult:
    """The failed result of an item whose ``step`` failed; the files already ``written`` for it are removed."""
    for path in written:
        path.unlink(missing_ok=True)
    return item_result(job.item.primary, "failed", f"writing {step}: {error_text(error)}", timings=timings)


def _write_one(output: OutputFormat, prediction: Prediction, context: WriteContext, path: Path) -> None:
    output.write(path, prediction, context)


def predict_loaded(
    predictor: Predictor, items: Sequence[WorkItem], decoded: Sequence[Decoded | None]
) -> list[Prediction | Exception]:
    """Decoded items through the model at once; when the batch fails, one at a time, so that only the items that
    fail get their exception (one item's failure never stops the others)."""
    try:
        return list(predictor.predict_batch(items, decoded))  # type: ignore[arg-type]
    except Exception:  # find the item that failed: the others still run
        predictions: list[Prediction | Exception] = []
        for item, data in zip(items, decoded, strict=True):
            try:
                predictions.append(predictor.predict(item, data))
            except Exception as error:
                predictions.append(error)
        return predictions


def process_item(
    job: Job,
    predictor: Predictor,
    formats: Sequence[OutputFormat],
    package: ModelPackage,
    model_fp: str,
    options: WriterOptions = WriterOptions(),
    *,
    inference_lock: contextlib.AbstractContextManager[Any] | None = None,
    decode_timeout: float | None = None,
) -> ItemResult:
    """Decode, predict and write one planned item in this thread; failures become a failed ItemResult.

    ``inference_lock``: held around the prediction only, so that threads sharing one predictor (a Ray actor)
    decode and write in parallel while the model runs one item at a time. ``decode_timeout``: None decodes in this
    thread; a number of seconds decodes in a worker process of its own (``loader.load_items``), killed after that
    long (0: no limit) or failing only this item when it dies.
    """
    from innereye_batch.pipeline.loader import decode_safely, load_items
    from innereye_batch.pipeline.state import clear_stale_result, with_problem

    if decode_timeout is None:
        loaded = decode_safely(predictor.decoder, job.item, 0)
    else:
        decoding = load_items([job.item], predictor.decoder, workers=1, pin_memory=False, timeout=decode_timeout)
        with contextlib.closing(decoding):  # its worker is killed when done, also on an error here
            loaded = next(decoding)
    if loaded.decoded is None:
        result = item_result(job.item.primary, "failed", loaded.error, timings={"load": loaded.load_seconds})
        return with_problem(result, clear_stale_result(job.folder, job.input_fp, model_fp))
    try:
        with inference_lock or contextlib.nullcontext():
            prediction = predictor.predict(job.item, loaded.decoded)
    except Exception as error:  # one item's failure never stops the others
        result = item_result(job.item.primary, "failed", f"inference: {error_text(error)}")
        return with_problem(result, clear_stale_result(job.folder, job.input_fp, model_fp))
    timings = {"load": loaded.load_seconds, **prediction.timings}
    return write_outputs(job, prediction, formats, package, model_fp, timings, options)
