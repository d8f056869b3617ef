"""The summaries of one run: an earlier run's removed when it starts, its own written when it ends (a shard's own,
merged with the other shards' when it finishes last: ``summarize``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innereye_batch.errors import UsageError, error_text
from innereye_batch.pipeline.progress import RunProgress
from innereye_batch.pipeline.summarize import (
    SummaryMergeError,
    merge_if_last,
    missing_shards,
    remove_shard_summaries,
    write_shard_summary,
)
from innereye_batch.results import UNFINISHED, ItemResult
from innereye_batch.writers.run_report import REPORT_HTML, write_run_report
from innereye_batch.writers.summary import SUMMARY_CSV, SUMMARY_JSON, write_summary

if TYPE_CHECKING:
    from innereye_batch.pipeline.run import RunOptions, RunReport


def remove_earlier_summaries(options: RunOptions) -> None:
    """The summaries of an earlier run: they would vouch for series this run redoes (or fails). Under the summary
    lock: a shard finishing meanwhile merges either before (its summary.json removed here) or after (without this
    shard's summary, so it waits for this run's). ``UsageError`` naming a file that cannot be removed."""
    from innereye_batch.pipeline.locks import summary_lock

    try:
        with summary_lock(options.output):
            if options.shard is None:
                remove_shard_summaries(options.output)  # this run's summary.json supersedes any sharded run's
            else:  # a summary present is one of this run's shards (merge_if_last relies on it)
                remove_shard_summaries(options.output, except_count=options.shard.count)
                (options.output / options.shard.summary_name).unlink(missing_ok=True)
            for name in (SUMMARY_JSON, SUMMARY_CSV, REPORT_HTML):
                (options.output / name).unlink(missing_ok=True)
    except OSError as error:
        name = Path(error.filename).name if error.filename else "file"
        reason = error.strerror or error_text(error)
        raise UsageError(f"cannot remove an earlier run's {name} from {options.output}: {reason}") from error


def write_summaries(
    options: RunOptions,
    report: RunReport,
    run_info: Mapping[str, Any],
    progress: RunProgress,
    holds: Callable[[ItemResult], bool] | None = None,
) -> None:
    """summary.json, summary.csv and report.html; for a shard its own summary, merged when it finished last."""
    try:
        if options.shard is None:
            report.summary_paths = tuple(
                write_summary(options.output, report.results, run_info=run_info, skipped_files=report.skipped_files)
            )
            # the page a person reads, after the summary
            report.summary_paths += (write_run_report(options.output, report.results, run_info),)
            return
        report.summary_paths = (
            write_shard_summary(
                options.output, options.shard, report.results, run_info=run_info, skipped_files=report.skipped_files
            ),
        )
        shard = options.shard
        merged, others = merge_if_last(options.output, shard, run_info, holds)
        if merged is not None:
            report.merged = True
            report.merged_unfinished = sum(r.status in UNFINISHED for r in merged.results)
            report.summary_paths += merged.paths
            report.shard_note = f"shard {shard}: every shard of {shard.count} done, summary.json merged"
        else:
            waiting = ", ".join(str(s) for s in missing_shards(options.output, shard.count))
            stale = (
                f"; from an earlier run (another plan or model, or results since removed or redone): "
                f"{', '.join(map(str, others))}"
                if others
                else ""
            )
            report.shard_note = (
                f"shard {shard}: {shard.summary_name} written; summary.json is merged when the last shard finishes "
                f"(waiting for {waiting or 'none'}{stale})"
            )
        progress.event("summarize", message=report.shard_note)
    except OSError as error:  # e.g. the disk is full: say so, never a traceback
        report.summary_error = error_text(error)
        progress.event("summary_failed", message=f"the run summary could not be written: {report.summary_error}")
    except SummaryMergeError as error:
        report.summary_error = str(error)
        progress.event("summary_failed", message=f"the shard summaries could not be merged: {error}")
