"""`innereye-batch summarize`: the shards' own summaries merged into the run's summary.json, summary.csv, report.html.

Each shard K/N of a run writes ``summary.shard-K-of-N.json`` (a summary.json of its share, with ``run.shard``
and ``run.plan_fingerprint``). The merge takes the N summaries of one N and refuses, with the reason, when one is
missing, when they disagree on the cohort (plan fingerprint), the model and output options (results
fingerprint), the formats or the tool version, when a key appears twice, or when a summary vouches for outputs
no longer in the folder (a listed file, or an already-done series' done record). The merged files are written by the
same writers as a single run's, so they hold the same items with the same statuses: records in shard order
(shard 0's in its run's order, then shard 1's...), files not used likewise; ``run`` is shard 0's with ``device``
(the distinct devices), ``started`` (earliest), ``finished`` (latest), ``stage_seconds`` (summed; ``wall`` from
the earliest start to the latest finish) merged and a ``shards`` list (per shard: device, times, counts).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innereye_batch.dicom.series import SkippedFile
from innereye_batch.errors import InnerEyeBatchError
from innereye_batch.files import atomic_write
from innereye_batch.pipeline.shards import SHARD_SUMMARY_GLOB, Shard, shard_from_summary_name
from innereye_batch.pipeline.state import DONE_RECORD, safe_folder_name
from innereye_batch.results import ALREADY_DONE, ItemResult, StructureStats
from innereye_batch.writers.summary import status_counts, summary_json_text

AGREED_FIELDS = (
    "tool_version",
    "model_task",
    "model_fingerprint",
    "results_fingerprint",
    "formats",
    "plan_fingerprint",
    "options",
)
"""Run fields every shard of one run must have alike (``options``: those that decide a series' status or values
without changing the model's results fingerprint: ``--max-voxels``, ``--regrid-irregular``, ``--amp``)."""


class SummaryMergeError(InnerEyeBatchError):
    """The shard summaries cannot be merged (one missing, or they describe different runs)."""


@dataclass(frozen=True)
class ShardSummary:
    """One shard's summary read back."""

    shard: Shard
    run: dict[str, Any]
    results: list[ItemResult]
    skipped_files: list[SkippedFile]


def write_shard_summary(
    output_dir: Path,
    shard: Shard,
    results: Sequence[ItemResult],
    *,
    run_info: Mapping[str, Any],
    skipped_files: Sequence[SkippedFile] = (),
) -> Path:
    """Write ``summary.shard-K-of-N.json`` (atomically): a summary.json of the shard's own share."""
    path = output_dir / shard.summary_name
    text = summary_json_text(results, run_info={**run_info, "shard": str(shard)}, skipped_files=skipped_files)
    atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))
    return path


def shard_summary_files(output_dir: Path) -> dict[int, dict[int, Path]]:
    """The shard summaries in ``output_dir``: shard count -> shard index -> file."""
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(output_dir.glob(SHARD_SUMMARY_GLOB)):
        shard = shard_from_summary_name(path.name)
        if shard is not None:
            found.setdefault(shard.count, {})[shard.index] = path
    return found


def remove_shard_summaries(output_dir: Path, *, except_count: int | None = None) -> None:
    """Remove shard summaries: those of earlier sharded runs (another N), or all (an unsharded run supersedes
    them). Only while holding the output lock."""
    for count, files in shard_summary_files(output_dir).items():
        if count != except_count:
            for path in files.values():
                path.unlink(missing_ok=True)


def _result(record: Mapping[str, Any]) -> ItemResult:
    return ItemResult(
        key=record["key"],
        series_instance_uid=record["series_instance_uid"],
        study_instance_uid=record["study_instance_uid"],
        modality=record["modality"],
        status=record["status"],
        reason=record.get("reason", ""),
        structures=tuple(StructureStats(s["name"], s["voxel_count"], s["volume_ml"]) for s in record["structures"]),
        probabilities=record.get("probabilities"),
        labels=tuple(record["predicted"]) if "predicted" in record else None,
        timings=dict(record.get("timings_s", {})),
        peak_memory_gib=dict(record.get("peak_memory_gib", {})),
        outputs=dict(record.get("outputs", {})),
    )


def read_shard_summary(path: Path, shard: Shard) -> ShardSummary:
    """A shard summary read back into results; SummaryMergeError naming the file when it cannot be."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        run = dict(document["run"])
        results = [_result(r) for r in document["series"]]
        skipped = [SkippedFile(Path(f["path"]), f["reason"]) for f in document["skipped_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        why = f"{type(error).__name__}: {error}"
        raise SummaryMergeError(f"{path.name}: not a readable shard summary ({why})") from None
    if run.get("shard") != str(shard):
        raise SummaryMergeError(f"{path.name}: records shard {run.get('shard')!r}, not {shard}")
    return ShardSummary(shard, run, results, skipped)


def shard_count(output_dir: Path, count: int | None = None) -> int:
    """The N of the shard summaries in ``output_dir`` (``count`` checked when given); SummaryMergeError when
    there are none, or summaries of several N and no ``count``."""
    found = shard_summary_files(output_dir)
    if count is not None:
        if count not in found:
            raise SummaryMergeError(f"{output_dir}: no summary of a run split into {count} shards")
        return count
    if not found:
        raise SummaryMergeError(
            f"{output_dir}: no shard summaries (summary.shard-K-of-N.json); an unsharded run writes summary.json itself"
        )
    if len(found) > 1:
        raise SummaryMergeError(
            f"{output_dir}: summaries of runs split into {', '.join(str(n) for n in sorted(found))} shards; "
            "say which with --shards N"
        )
    return next(iter(found))


def load_shard_summaries(output_dir: Path, count: int | None = None) -> list[ShardSummary]:
    """Every shard summary of the run split into ``count`` shards (the only count present when None), checked
    to belong together and every output they list to be in the folder still; SummaryMergeError with the reason
    otherwise."""
    found = shard_summary_files(output_dir)
    count = shard_count(output_dir, count)
    missing = [f"{k}/{count}" for k in range(count) if k not in found[count]]
    if missing:
        raise SummaryMergeError(
            f"{output_dir}: no summary yet from shard(s) {', '.join(missing)} of {count}: they have not finished "
            "(or never ran, or were killed): run them, then summarize"
        )
    shards = [read_shard_summary(found[count][k], Shard(k, count)) for k in range(count)]
    for field in AGREED_FIELDS:
        values = {json.dumps(s.run.get(field), sort_keys=True) for s in shards}
        if len(values) > 1:
            why = {
                "plan_fingerprint": "the shards saw different cohorts (the input, --series or --modality changed "
                "between their scans); rerun the shards that differ",
                "results_fingerprint": "the shards ran with different models or output options",
            }.get(field, "the shards ran with different settings")
            per_shard = ", ".join(f"{s.shard}: {str(s.run.get(field))[:16]}" for s in shards)
            raise SummaryMergeError(f"{output_dir}: the shard summaries disagree on {field} ({per_shard}): {why}")
    seen: dict[str, Shard] = {}
    for summary in shards:
        for result in summary.results:
            if result.key in seen:
                raise SummaryMergeError(
                    f"{output_dir}: item {result.key} is in the summaries of shards {seen[result.key]} and "
                    f"{summary.shard}"
                )
            seen[result.key] = summary.shard
    for summary in shards:
        gone = [path for r in summary.results for path in r.outputs.values() if not (output_dir / path).is_file()]
        gone += [str(folder / DONE_RECORD) for r in summary.results if (folder := _done_folder(output_dir, r))]
        if gone:
            raise SummaryMergeError(
                f"{output_dir}: shard {summary.shard}'s summary lists {len(gone)} output(s) no longer in the folder "
                f"(e.g. {gone[0]}): rerun shard {summary.shard} (it redoes those series), then summarize"
            )
    return shards


def _done_folder(output_dir: Path, result: ItemResult) -> Path | None:
    """The folder of a result skipped as already done whose done record is gone; None otherwise, and for a key
    that is not its own folder's name (a hashed name comes from the real key, which the summary may keep only in
    printable form)."""
    if result.status != "skipped" or result.reason != ALREADY_DONE or safe_folder_name(result.key) != result.key:
        return None
    folder = output_dir / result.key
    return None if (folder / DONE_RECORD).is_file() else folder.relative_to(output_dir)


def _time(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def merged_run_info(shards: Sequence[ShardSummary]) -> dict[str, Any]:
    """``run`` of the merged summary (see the module docstring)."""
    run = {k: v for k, v in shards[0].run.items() if k != "shard"}
    run["device"] = ",".join(dict.fromkeys(str(s.run.get("device", "")) for s in shards))
    starts = [t for s in shards if (t := _time(s.run.get("started"))) is not None]
    ends = [t for s in shards if (t := _time(s.run.get("finished"))) is not None]
    stages: dict[str, float] = {}
    for summary in shards:
        for stage, seconds in (summary.run.get("stage_seconds") or {}).items():
            if stage != "wall":
                stages[stage] = round(stages.get(stage, 0.0) + float(seconds), 3)
    if starts and ends:
        run["started"], run["finished"] = min(starts).isoformat(), max(ends).isoformat()
        stages["wall"] = round((max(ends) - min(starts)).total_seconds(), 3)
    run["stage_seconds"] = stages
    changed = [s.run["changed_outputs"] for s in shards if isinstance(s.run.get("changed_outputs"), dict)]
    if changed:  # --verify-outputs: every shard's redone series, not the first shard's alone
        run["changed_outputs"] = {key: files for shard_changed in changed for key, files in shard_changed.items()}
    peaks: dict[str, float] = {}
    for summary in shards:  # the largest of any shard: what a node must have to run one
        for where, gib in (summary.run.get("peak_memory_gib") or {}).items():
            peaks[where] = max(peaks.get(where, 0.0), float(gib))
    if peaks:
        run["peak_memory_gib"] = peaks
    run["shards"] = [
        {
            "shard": str(s.shard),
            "device": s.run.get("device"),
            "started": s.run.get("started"),
            "finished": s.run.get("finished"),
            "wall_s": (s.run.get("stage_seconds") or {}).get("wall"),
            "counts": status_counts(s.results),
            "peak_memory_gib": s.run.get("peak_memory_gib"),
        }
        for s in shards
    ]
    return run


@dataclass(frozen=True)
class MergedSummary:
    """What ``merge_shard_summaries`` wrote."""

    count: int
    results: list[ItemResult]
    skipped_files: list[SkippedFile]
    paths: tuple[Path, ...]


def merge_shard_summaries(output_dir: Path, count: int | None = None) -> MergedSummary:
    """Merge the N shard summaries into summary.json, summary.csv and report.html (under the summary lock)."""
    from innereye_batch.pipeline.locks import summary_lock

    with summary_lock(output_dir):
        return _merge(output_dir, count)


def _merge(output_dir: Path, count: int | None) -> MergedSummary:
    """``merge_shard_summaries``, the summary lock held by the caller."""
    from innereye_batch.writers.run_report import write_run_report
    from innereye_batch.writers.summary import write_summary

    shards = load_shard_summaries(output_dir, count)
    results = [r for s in shards for r in s.results]
    skipped = [f for s in shards for f in s.skipped_files]
    run_info = merged_run_info(shards)
    paths = (
        *write_summary(output_dir, results, run_info=run_info, skipped_files=skipped),
        write_run_report(output_dir, results, run_info),
    )
    return MergedSummary(len(shards), results, skipped, paths)


def missing_shards(output_dir: Path, count: int) -> list[Shard]:
    """The shards of ``count`` whose summary is not (yet) in ``output_dir``."""
    present = shard_summary_files(output_dir).get(count, {})
    return [Shard(k, count) for k in range(count) if k not in present]


def _still_holds(path: Path, index: int, count: int, holds: Callable[[ItemResult], bool]) -> bool:
    try:
        summary = read_shard_summary(path, Shard(index, count))
    except SummaryMergeError:
        return False
    return all(holds(result) for result in summary.results)


def merge_if_last(
    output_dir: Path,
    shard: Shard,
    run_info: Mapping[str, Any],
    holds: Callable[[ItemResult], bool] | None = None,
) -> tuple[MergedSummary | None, list[Shard]]:
    """After shard ``shard`` wrote its summary (``run_info`` its run): merge when the summaries of every shard are
    present and agree with this one on every ``AGREED_FIELDS`` (this shard finished last, or alongside the
    last), and, with ``holds`` (``plan.results_hold``), when every result of the other shards still holds in
    the output folder. Otherwise nothing is merged; the second value lists the shards whose summary disagrees or
    no longer holds (an earlier run's, left by a shard of this run that has not started yet: its outputs since
    removed, or its inputs changed): `summarize` says why.

    A shard removes its own old summary when it starts, under the summary lock, so a summary present is of the
    shard's latest run; the checks and the merge hold that lock throughout, so a shard starting again meanwhile
    removes its summary (and the merged one) either before the checks or after the merge, never between them.
    Two shards finishing together may both merge; one after the other, to the same result.
    """
    from innereye_batch.pipeline.locks import summary_lock

    with summary_lock(output_dir):
        if missing_shards(output_dir, shard.count):
            return None, []
        files = shard_summary_files(output_dir)[shard.count]
        others = []
        for index, path in sorted(files.items()):
            try:
                run = json.loads(path.read_text(encoding="utf-8"))["run"]
            except (OSError, ValueError, KeyError, TypeError):
                others.append(Shard(index, shard.count))
                continue
            disagrees = any(run.get(f) != run_info.get(f) for f in AGREED_FIELDS)  # what the merge itself checks
            stale = holds is not None and index != shard.index and not _still_holds(path, index, shard.count, holds)
            if disagrees or stale:
                others.append(Shard(index, shard.count))
        if others:
            return None, others
        return _merge(output_dir, shard.count), []
