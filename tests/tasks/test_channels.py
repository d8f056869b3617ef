"""Matching series to a model's input channels, per study; missing or ambiguous channels are reported."""

from __future__ import annotations

from pathlib import Path

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.series import SeriesInfo, SliceRef
from innereye_batch.model.spec import ChannelSpec
from innereye_batch.tasks.channels import plan_work

GEOMETRY = Geometry((1, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def make(uid: str, study: str, modality: str, description: str = "") -> SeriesInfo:
    return SeriesInfo(
        series_instance_uid=uid,
        study_instance_uid=study,
        frame_of_reference_uid="1.9",
        modality=modality,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_description=description,
        slices=(SliceRef(Path(f"/x/{uid}"), f"{uid}.1", (0.0, 0.0, 0.0)),),
        geometry=GEOMETRY,
        transfer_syntaxes=("1.2.840.10008.1.2.1",),
    )


def test_single_channel_runs_matching_series_and_skips_others() -> None:
    series = [make("1.1", "9.1", "CT"), make("1.2", "9.1", "MR"), make("1.3", "9.2", "CT")]
    items, unmatched = plan_work(series, [ChannelSpec("ct", modality="CT")])
    assert [i.primary.key for i in items] == ["1.1", "1.3"]
    assert [(u.series.key, u.failed) for u in unmatched] == [("1.2", False)]
    assert "Modality=CT" in unmatched[0].reason


def test_two_channels_pair_within_study_in_channel_order() -> None:
    channels = [ChannelSpec("ct", modality="CT"), ChannelSpec("t2", modality="MR", series_description="t2")]
    series = [
        make("2.1", "9.1", "MR", "Ax T2 FSE"),
        make("2.2", "9.1", "CT"),
        make("2.3", "9.1", "MR", "T1 post"),
    ]
    items, unmatched = plan_work(series, channels)
    assert [[s.key for s in i.inputs] for i in items] == [["2.2", "2.1"]]
    assert [(u.series.key, u.failed) for u in unmatched] == [("2.3", False)]


def test_missing_and_ambiguous_channels_fail_the_study_instead_of_guessing() -> None:
    channels = [ChannelSpec("ct", modality="CT"), ChannelSpec("mr", modality="MR")]
    series = [
        make("3.1", "9.1", "CT"),  # study 9.1 has no MR
        make("3.2", "9.2", "CT"),
        make("3.3", "9.2", "MR", "a"),
        make("3.4", "9.2", "MR", "b"),  # study 9.2 has two MR: ambiguous
        make("3.5", "9.3", "SR"),  # nothing usable in study 9.3: skipped, not failed
    ]
    items, unmatched = plan_work(series, channels)
    assert items == []
    failed = {u.series.study_instance_uid: u.reason for u in unmatched if u.failed}
    assert set(failed) == {"9.1", "9.2"}
    assert "no series matches channel 'mr'" in failed["9.1"]
    assert "ambiguous" in failed["9.2"] and "3.3" in failed["9.2"] and "3.4" in failed["9.2"]
    skipped = {u.series.key for u in unmatched if not u.failed}
    assert skipped == {"3.3", "3.4", "3.5"}
    assert {u.series.key for u in unmatched if u.failed} == {"3.1", "3.2"}
