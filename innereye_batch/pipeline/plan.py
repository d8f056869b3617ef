"""Plan a run: which discovered series become work items, and which are settled before any decoding.

Per series (or study, for multi-channel models): selected by --series / --modality, matched to the model's
channels, refused for fatal scan problems, for a grid over the voxel limit or for lacking what a requested
output needs, skipped when already done with this model and input; the rest become Jobs. Everything here comes
from headers, so `--dry-run` tells the truth.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from innereye_batch.dicom.problems import OF_THE_READING
from innereye_batch.dicom.scan import ScanResult
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.model.spec import ModelPackage
from innereye_batch.pipeline.process import Job, item_result
from innereye_batch.pipeline.shards import Shard
from innereye_batch.pipeline.state import (
    DONE_RECORD,
    changed_outputs,
    clear_stale_result,
    done_record,
    done_result_fields,
    input_fingerprint,
    is_done,
    series_folder,
    with_problem,
)
from innereye_batch.results import ALREADY_DONE, ItemResult
from innereye_batch.tasks import task_for
from innereye_batch.tasks.base import WorkItem
from innereye_batch.text import printable
from innereye_batch.writers.registry import OutputFormat


@dataclass(frozen=True)
class Selection:
    """The series a run is restricted to: by SeriesInstanceUID (or key) and by Modality; empty means all."""

    series_uids: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()

    def __call__(self, series: SeriesInfo) -> bool:
        if self.series_uids and not {series.series_instance_uid, series.key} & set(self.series_uids):
            return False
        return not self.modalities or series.modality.upper() in {m.upper() for m in self.modalities}


def item_fingerprint(item: WorkItem) -> str:
    """sha256 over the input fingerprints of every series of the item."""
    return hashlib.sha256("|".join(input_fingerprint(s) for s in item.inputs).encode()).hexdigest()


DEFAULT_MAX_VOXELS = 2**29
"""Largest grid a series may have, source or resampled (536,870,912 voxels: 2 GiB as float32)."""
MAX_IMAGE_PIXELS = 2**26
"""Largest 2-D image a classification model takes, whatever ``--max-voxels`` says (67,108,864 pixels, 8192 x 8192;
radiographs hold at most about 30 million): its decoding costs 12-24 bytes a pixel (the modality and VOI mapping
in float64), not the 4 of a float32 volume, and a small compressed upload may claim a huge image."""


def _too_large(item: WorkItem, package: ModelPackage, max_voxels: int) -> list[str]:
    """Grids over ``max_voxels``, known from headers before anything is decoded: the source grid of every input,
    and the model's grid where it resamples (a 4 KB file may claim 65535 x 65535 pixels)."""
    from innereye_batch.engine.preprocess import resampled_shape

    reasons = []
    target = package.segmentation.target_spacing if package.task == "segmentation" else None
    if package.task == "classification" and max_voxels > MAX_IMAGE_PIXELS:
        max_voxels, why = MAX_IMAGE_PIXELS, "the limit for a 2-D image"
    else:
        why = "--max-voxels"
    for series in item.inputs:
        grids = [("", series.geometry.shape)]
        grid = series.geometry
        if series.irregular and series.regrid_geometry is not None:
            grid = series.regrid_geometry
            grids.append((" resampled onto a regular grid", grid.shape))
        if target is not None:
            grids.append((" resampled to the model's spacing", resampled_shape(grid.shape, grid.spacing, target)))
        for what, shape in grids:
            voxels = math.prod(shape)
            if voxels > max_voxels:
                reasons.append(
                    f"{series.key}: grid{what} {'x'.join(str(n) for n in shape)} is {voxels:,} voxels "
                    f"({voxels * 4 / 2**30:.1f} GiB as float32), over the limit of {max_voxels:,} ({why})"
                )
    return reasons


def _turned(item: WorkItem, package: ModelPackage) -> list[str]:
    """The primary series, when which way its axes run cannot be told (about 45 degrees between the patient's) and
    the model states an ``orientation``; or when they run elsewhere and the model refuses to turn them: fed as
    stored, it would be seen mirrored or turned (a feet-first stack: left and right swapped)."""
    wanted = package.segmentation.orientation if package.task == "segmentation" else None
    if wanted is None:
        return []
    geometry = item.primary.geometry
    if geometry.axes_ambiguous():
        return [
            f"{item.primary.key}: one of its axes lies about 45 degrees between two of the patient's (or nearer "
            "another patient axis than the one it would be taken for), so which way it runs cannot be told against "
            f"the model's training stacks ({wanted})"
        ]
    codes = geometry.axis_codes()
    if codes == wanted or package.segmentation.reorient:
        return []
    return [
        f"{item.primary.key}: its columns, rows and slices run towards {_directions(codes)} ({codes}); the model "
        f"was trained on stacks running towards {_directions(wanted)} ({wanted}) and would see this one mirrored "
        'or turned ("reorient": false)'
    ]


def _directions(codes: str) -> str:
    names = {"L": "left", "R": "right", "P": "posterior", "A": "anterior", "S": "superior", "I": "inferior"}
    return ", ".join(names[c] for c in codes)


def _unfit(item: WorkItem, formats: Sequence[OutputFormat], package: ModelPackage, max_voxels: int) -> list[str]:
    """Why the item cannot run: fatal scan problems of its series, grids over the voxel limit, and outputs its
    primary series cannot get."""
    reasons = [f"{s.key}: {p}" for s in item.inputs for p in s.fatal_problems]
    reasons += _too_large(item, package, max_voxels)
    reasons += _turned(item, package)
    for output in formats:
        why = output.needs(item.primary) if output.needs is not None else None
        if why:
            reasons.append(f"output {output.name}: {why}")
    return reasons


def plan_run(
    scan: ScanResult,
    package: ModelPackage,
    formats: Sequence[OutputFormat],
    output_dir: Path,
    *,
    selection: Selection = Selection(),
    overwrite: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    model_fp: str | None = None,
    shard: Shard | None = None,
    clear_failed: bool = False,
    verify: bool = False,
) -> tuple[list[Job], list[ItemResult]]:
    """Decide per discovered series: run it (a Job), or settle it now (skipped or failed, with the reason).

    With ``shard``, only the items (and unmatched series) whose key belongs to it, chosen before any file is
    looked at again, so each of N shards pays only for its own share. ``clear_failed`` (a run holding the output
    lock, never a dry run): the folder of a series that fails here loses an earlier run's stale result.
    ``verify``: a done series counts as done only when its outputs' content is as recorded (``changed_outputs``
    reads each); one whose outputs changed is redone, its Job naming them.
    """
    series = [s for s in scan.series if selection(s)]
    items, unmatched = task_for(package.task).plan_items(series, package)
    if shard is not None:
        items = [i for i in items if shard.owns(i.key)]
        unmatched = [u for u in unmatched if shard.owns(u.series.key)]
    model_fp = model_fp or package.fingerprint()
    settled = []
    for u in unmatched:
        result = item_result(u.series, "failed" if u.failed else "skipped", u.reason)
        if clear_failed and u.failed:  # it matched no item now, so a result of an earlier run was for other inputs
            result = with_problem(result, clear_stale_result(series_folder(output_dir, u.series), None, model_fp))
        settled.append(result)
    names = tuple(f.name for f in formats)
    jobs = []
    for item in items:
        reasons = _unfit(item, formats, package, max_voxels)
        folder = series_folder(output_dir, item.primary)
        if reasons:
            result = item_result(item.primary, "failed", "; ".join(reasons))
            if clear_failed:
                result = with_problem(result, _cleared(folder, item, model_fp))
            settled.append(result)
            continue
        fingerprint = item_fingerprint(item)
        record = None if overwrite else done_record(folder, fingerprint, model_fp, names)
        changed = tuple(changed_outputs(folder, record)) if verify and record is not None else ()
        if record is not None and not changed:  # the record read once: it says what the series found
            settled.append(item_result(item.primary, "skipped", ALREADY_DONE, **done_result_fields(folder, record)))
            continue
        jobs.append(Job(item, folder, fingerprint, changed))
    jobs.sort(key=_voxels, reverse=True)  # stable: equal sizes keep the scan's order
    return jobs, settled


def _cleared(folder: Path, item: WorkItem, model_fp: str) -> str:
    """After ``item`` failed at planning: its folder cleared of an earlier run's stale result (``clear_stale_result``,
    whose problem it returns). Where the files themselves are refused (fatal scan problems: a missing slice, an
    unreadable file), a result made of these very files by this model is stale too: a version that did not see
    the problem made it (it resampled across the gap that ``numbering_gaps`` now finds), and it is removed, said in
    the reason. A series refused for this run's options alone (``--max-voxels``), or for what this reading met (an
    I/O error, a decoder not installed here: ``OF_THE_READING``), keeps its result."""
    problem = clear_stale_result(folder, item_fingerprint(item), model_fp)  # of other files, or another model
    kept = not folder.is_symlink() and (folder / DONE_RECORD).is_file()  # made of these files by this model
    of_content = [p for s in item.inputs for p in s.fatal_problems if p.kind not in OF_THE_READING]
    if problem or not kept or not of_content:
        return problem
    return clear_stale_result(folder, None, model_fp) or (
        "the result an earlier run made of these files was removed: it did not see this problem"
    )


def _voxels(job: Job) -> int:
    """The job's input voxels. Jobs run largest first, so that a run's end, where the device has nothing left to
    do, waits on the export of its smallest series rather than of any series (longest-processing-time order)."""
    return sum(math.prod(s.geometry.shape) for s in job.item.inputs)


def results_hold(
    scan: ScanResult,
    package: ModelPackage,
    formats: Sequence[OutputFormat],
    output_dir: Path,
    *,
    selection: Selection = Selection(),
    model_fp: str,
) -> Callable[[ItemResult], bool]:
    """A check that a result some run recorded (another shard's, say) still holds: true for a result that vouches
    for no output (failed, not for this model), else only when the item's folder has its done record for the
    item's inputs as scanned now and this model, with every output present (``is_done``).

    The items are planned from ``scan`` on the first call, and each checked item's files are looked at (their
    fingerprint) then."""
    names = tuple(f.name for f in formats)
    items: dict[str, WorkItem] = {}

    def holds(result: ItemResult) -> bool:
        if not (result.status == "ok" or (result.status == "skipped" and result.reason == ALREADY_DONE)):
            return True
        if not items:
            planned, _ = task_for(package.task).plan_items([s for s in scan.series if selection(s)], package)
            items.update({printable(item.key): item for item in planned})  # summaries keep keys printable
        item = items.get(result.key)
        if item is None:  # the series is gone, or is no longer an item of this model
            return False
        return is_done(series_folder(output_dir, item.primary), item_fingerprint(item), model_fp, names)

    return holds
