"""Match scanned series to a model's input channels: one work item per series, or per study for multi-channel."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.model.spec import ChannelSpec
from innereye_batch.tasks.base import Unmatched, WorkItem


def channel_matches(series: SeriesInfo, channel: ChannelSpec) -> bool:
    """True when every rule the channel sets matches the series."""
    if channel.modality and series.modality.upper() != channel.modality.upper():
        return False
    return not (
        channel.series_description
        and not re.search(channel.series_description, series.series_description, re.IGNORECASE)
    )


def _describe(channel: ChannelSpec) -> str:
    rules = [f"Modality={channel.modality}"] if channel.modality else []
    if channel.series_description:
        rules.append(f"SeriesDescription~/{channel.series_description}/")
    return f"channel '{channel.name}' ({', '.join(rules) or 'any series'})"


def plan_work(series: Sequence[SeriesInfo], channels: Sequence[ChannelSpec]) -> tuple[list[WorkItem], list[Unmatched]]:
    """Turn scanned series into work items for a model with ``channels``.

    One channel: every matching series is a work item; others are skipped. Several channels: within each study,
    exactly one series must match each channel; a study where a channel matches none or several is reported as
    failed (never guessed), and series that match no channel are skipped.
    """
    if len(channels) == 1:
        items, unmatched = [], []
        for s in series:
            if channel_matches(s, channels[0]):
                items.append(WorkItem((s,)))
            elif not s.modality and s.fatal_problems:  # nothing readable says what it is: fail, never skip
                why = "; ".join(str(p) for p in s.fatal_problems)
                unmatched.append(Unmatched(s, f"{why} (its Modality could not be read either)", True))
            else:
                unmatched.append(Unmatched(s, f"does not match the model's {_describe(channels[0])}", False))
        return items, unmatched

    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for s in series:
        by_study[s.study_instance_uid].append(s)
    items, unmatched = [], []
    for study_series in by_study.values():
        chosen: list[SeriesInfo] = []
        problems: list[str] = []
        for channel in channels:
            candidates = [s for s in study_series if channel_matches(s, channel)]
            if len(candidates) == 1:
                chosen.append(candidates[0])
            elif not candidates:
                problems.append(f"no series matches {_describe(channel)}")
            else:
                keys = ", ".join(c.key for c in candidates)
                problems.append(f"{len(candidates)} series match {_describe(channel)} ({keys}): ambiguous")
        matched = {s.key for s in study_series if any(channel_matches(s, c) for c in channels)}
        if not matched:
            unmatched.extend(Unmatched(s, "matches none of the model's input channels", False) for s in study_series)
            continue
        if problems or len({s.key for s in chosen}) != len(chosen):
            if not problems:
                problems.append("one series matches several channels; make the channel rules distinct")
            reason = f"study {study_series[0].study_instance_uid}: " + "; ".join(problems)
            reported = chosen[0] if chosen else study_series[0]
            unmatched.append(Unmatched(reported, reason, True))
            for s in study_series:
                if s.key != reported.key:
                    why = reason if s.key in matched else "matches none of the model's input channels"
                    unmatched.append(Unmatched(s, why, False))
            continue
        items.append(WorkItem(tuple(chosen)))
        for s in study_series:
            if s.key not in matched:
                unmatched.append(Unmatched(s, "matches none of the model's input channels", False))
    return items, unmatched
