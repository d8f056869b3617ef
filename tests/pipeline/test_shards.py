"""`run --shard K/N`: N shards into one folder, one after another and all at once, equal one unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from innereye_batch.errors import UsageError
from innereye_batch.pipeline.run import run_batch
from innereye_batch.pipeline.shards import Shard, parse_shard, plan_fingerprint, shard_of
from tests.pipeline.scale_helpers import ScaleCase, assert_same_as_reference, make_case, statuses, summary

ROOT = Path(__file__).resolve().parents[2]


def _summarize(out: Path) -> subprocess.CompletedProcess[str]:
    """``innereye-batch summarize --output out`` by hand, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "innereye_batch", "summarize", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> ScaleCase:
    return make_case(tmp_path_factory.mktemp("shards"))


def test_shard_of_is_a_partition_stable_across_processes() -> None:
    keys = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(600)] + ["1.2.3/4", "..", "1.2.3.stack2", "\udcff"]
    for count in (1, 2, 3, 7):
        owners = [[k for k in range(count) if Shard(k, count).owns(key)] for key in keys]
        assert all(len(o) == 1 for o in owners), "every key in exactly one shard"
        sizes = [sum(o == [k] for o in owners) for k in range(count)]
        assert min(sizes) > 0.7 * len(keys) / count  # sha256 spreads keys evenly
    code = (
        "import sys; from innereye_batch.pipeline.shards import shard_of; print([shard_of(k, 5) for k in sys.argv[1:]])"
    )
    others = [
        subprocess.run(
            [sys.executable, "-c", code, *keys[:50]],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
        ).stdout.strip()
        for seed in ("1", "2")
    ]
    assert others[0] == others[1] == str([shard_of(k, 5) for k in keys[:50]])


def test_parse_shard_and_its_errors() -> None:
    assert parse_shard("2/3") == Shard(2, 3) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    for bad in ("3/3", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)
    assert Shard(1, 3).summary_name == "summary.shard-1-of-3.json"
    assert plan_fingerprint(["b", "a", "a"]) == plan_fingerprint(["a", "b"]) != plan_fingerprint(["a"])


def test_three_shards_one_after_another_equal_a_single_run(case: ScaleCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reports = [run_batch(case.options(out, shard=Shard(k, 3))) for k in range(3)]
    assert [r.merged for r in reports] == [False, False, True]
    assert "waiting for 1/3, 2/3" in reports[0].shard_note
    keys = [{r.key for r in report.results} for report in reports]
    assert sum(len(k) for k in keys) == len(set().union(*keys)), "no item in two shards"
    for k, report in enumerate(reports):
        assert all(Shard(k, 3).owns(r.key) for r in report.results)
        shard_summary = json.loads((out / f"summary.shard-{k}-of-3.json").read_text())
        assert shard_summary["run"]["shard"] == f"{k}/3"
        assert {r["key"] for r in shard_summary["series"]} == keys[k]
    assert sum(1 for k in keys if k) >= 2, "the cohort must spread over the shards for the test to mean anything"
    assert_same_as_reference(case, out)
    run = summary(out)["run"]
    assert [s["shard"] for s in run["shards"]] == ["0/3", "1/3", "2/3"]
    assert run["plan_fingerprint"] == summary(case.reference)["run"]["plan_fingerprint"]
    assert run["started"] <= run["finished"] and run["stage_seconds"]["wall"] > 0

    # a shard run again skips what it did; the merged summary then says so, as a rerun of a single run would
    again = run_batch(case.options(out, shard=Shard(1, 3)))
    assert again.merged
    rerun = statuses(out)
    for key in keys[1]:
        expected = statuses(case.reference)[key]
        assert rerun[key] == (
            ("skipped", "already done with this model and input") if expected[0] == "ok" else expected
        )


def test_a_shard_rerun_removes_a_temporary_left_in_a_done_series_folder(case: ScaleCase, tmp_path: Path) -> None:
    """A run killed after a series' done record and before its temporary label map went (``fan_out``) leaves
    the temporary in a done folder: a shard's rerun skips the series and must still remove it (only an unsharded
    run did), and never touch another shard's folders."""
    out = tmp_path / "out"
    for k in range(2):
        run_batch(case.options(out, shard=Shard(k, 2)))
    done = [r["key"] for r in summary(out)["series"] if r["status"] == "ok"]
    mine = next(key for key in done if Shard(0, 2).owns(key))
    theirs = next(key for key in done if Shard(1, 2).owns(key))
    left = [out / key / ".tmp-4242-0a1b-labels.npy" for key in (mine, theirs)]
    for path in left:
        path.write_bytes(b"\x93NUMPY")

    again = run_batch(case.options(out, shard=Shard(0, 2)))

    assert statuses(out)[mine] == ("skipped", "already done with this model and input") and again.merged
    assert not left[0].exists()
    assert left[1].exists()  # shard 1's folder: shard 1 may be writing it


def test_three_shards_at_once_equal_a_single_run(case: ScaleCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--model", str(case.model), "--input", str(case.cohort.root), "--output", str(out), "--device", "cpu"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "innereye_batch", "run", *args, "--workers", "0", "--shard", f"{k}/3"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(3)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all("Traceback" not in o and "in use" not in o for o in outputs), outputs
    assert all(p.returncode in (0, 1) for p in processes), outputs
    assert any("summary.json merged" in o for o in outputs), outputs
    assert_same_as_reference(case, out)
    shards = summary(out)["run"]["shards"]
    assert sum(s["counts"]["total"] for s in shards) == len(statuses(case.reference))


def test_summarize_command_merges_again(case: ScaleCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for k in range(2):
        run_batch(case.options(out, shard=Shard(k, 2)))
    (out / "summary.json").unlink()
    (out / "summary.csv").unlink()
    (out / "report.html").unlink()
    done = _summarize(out)
    assert done.returncode == 1, done.stdout + done.stderr  # two series failed, as in the single run
    assert "2 shard summaries merged: 6 ok, 2 failed, 1 skipped" in done.stdout
    assert_same_as_reference(case, out)
    # an unsharded run afterwards supersedes the shards: their summaries go, its own summary stays
    report = run_batch(case.options(out))
    assert not list(out.glob("summary.shard-*")) and report.exit_code == 1
    assert summary(out)["counts"]["skipped"] == 7  # six done, one MR


def test_a_shard_does_not_merge_results_of_another_shard_that_no_longer_hold(case: ScaleCase, tmp_path: Path) -> None:
    """A rerun's first shard finds the other shard's summary of the last run: one of its series has since lost an
    output. Merged, summary.json would say "ok" for it; the shard waits for the other to run again instead."""
    out = tmp_path / "out"
    for k in range(2):
        run_batch(case.options(out, shard=Shard(k, 2)))
    theirs = [key for key, (status, _) in statuses(out).items() if status == "ok" and Shard(1, 2).owns(key)]
    assert theirs, "the cohort must give shard 1 a series for the test to mean anything"
    (out / theirs[0] / "segmentation.nii.gz").unlink()

    first = run_batch(case.options(out, shard=Shard(0, 2)))

    assert not first.merged and "1/2" in first.shard_note and "since removed or redone" in first.shard_note
    assert not (out / "summary.json").exists()  # no summary vouches for the lost output
    by_hand = _summarize(out)
    assert by_hand.returncode == 1 and "no longer in the folder" in " ".join(by_hand.stderr.split()), by_hand.stderr
    assert not (out / "summary.json").exists()
    last = run_batch(case.options(out, shard=Shard(1, 2)))  # shard 1 of the rerun redoes the series, and merges
    assert last.merged and statuses(out)[theirs[0]] == ("ok", "")
    assert (out / theirs[0] / "segmentation.nii.gz").is_file()


def test_series_a_shard_never_ran_make_the_merging_shard_and_summarize_exit_1(case: ScaleCase, tmp_path: Path) -> None:
    """Shard 1 stopped (SIGTERM) after its first series: its others are "not run". The shard that merges last
    exited 0 and `summarize` too, as if every series had its result."""
    out = tmp_path / "out"
    run_batch(case.options(out, shard=Shard(1, 2)))
    path = out / "summary.shard-1-of-2.json"
    document = json.loads(path.read_text())
    ok = [record for record in document["series"] if record["status"] == "ok"]
    assert len(ok) >= 2, "the cohort must give shard 1 two series for the test to mean anything"
    for record in ok[1:]:  # as an interrupted shard records them (their folders hold nothing)
        record.update(status="not_run", reason="not run: the run was interrupted", outputs={}, structures=[])
        (out / record["key"] / "done.json").unlink()
    path.write_text(json.dumps(document))

    last = run_batch(case.options(out, shard=Shard(0, 2)))

    assert last.merged and last.exit_code == 1
    merged = summary(out)
    assert merged["counts"]["not_run"] == len(ok) - 1
    assert last.merged_unfinished == merged["counts"]["not_run"] + merged["counts"]["failed"]
    again = _summarize(out)
    assert again.returncode == 1 and f"{len(ok) - 1} not run" in " ".join(again.stdout.split()), again.stdout


def test_shards_merge_when_a_key_holds_a_control_character(tmp_path: Path) -> None:
    """Summaries keep keys printable (ESC as the text "\\x1b"): the check that another shard's results still hold
    looked the printable key up among the real ones, found nothing, and the shards never merged."""
    from innereye_batch.pipeline.run import RunOptions
    from tests.factory import write_series
    from tests.pipeline.cohort import model_folder

    model = model_folder(tmp_path / "model", members=1)
    scans, out = tmp_path / "scans", tmp_path / "out"
    for i in range(3):
        write_series(scans / f"s{i}", shape=(6, 12, 12), seed=10 + i)
    write_series(scans / "odd", shape=(6, 12, 12), seed=40, series_instance_uid="1.2.3\x1b.4")
    reports = []
    for _ in range(2):  # the second round: every series done, each shard merges what the other did
        for k in range(2):
            options = RunOptions(model=model, input=scans, output=out, device="cpu", workers=0, formats=("nifti",))
            reports.append(run_batch(replace(options, shard=Shard(k, 2))))
    assert [r.merged for r in reports] == [False, True, True, True], [r.shard_note or r.summary_error for r in reports]
    assert summary(out)["counts"]["total"] == 4


def test_summarize_refuses_shards_that_saw_a_series_in_other_states(tmp_path: Path) -> None:
    """A slice arrived in a series of shard 1 after both shards ran; shard 0 ran again and rightly did not merge,
    but `summarize` by hand merged shard 1's old summary, which says ok for outputs of 8 slices of a 9-slice
    series. Each shard's plan fingerprint now covers the series' files as it scanned them."""
    from innereye_batch.pipeline.run import RunOptions
    from tests.factory import write_series
    from tests.pipeline.cohort import model_folder, uid_in_shard

    model, scans, out = model_folder(tmp_path / "model", members=1), tmp_path / "scans", tmp_path / "out"
    written = [
        write_series(scans / f"s{i}", shape=(8, 12, 12), seed=20 + i, series_instance_uid=uid_in_shard(i % 2, 2))
        for i in range(6)
    ]
    options = RunOptions(model=model, input=scans, output=out, device="cpu", workers=0, formats=("nifti",))
    for k in range(2):
        run_batch(replace(options, shard=Shard(k, 2)))
    assert summary(out)["counts"]["ok"] == 6
    theirs = next(s for s in written if Shard(1, 2).owns(s.series_instance_uid))
    late = pydicom.dcmread(theirs.paths[-1])
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    late.ImagePositionPatient = [*late.ImagePositionPatient[:2], float(late.ImagePositionPatient[2]) + 2.5]
    late.save_as(theirs.paths[0].parent / "late.dcm", enforce_file_format=True)

    assert not run_batch(replace(options, shard=Shard(0, 2))).merged
    by_hand = _summarize(out)
    assert by_hand.returncode == 1 and "saw different cohorts" in " ".join(by_hand.stderr.split()), by_hand.stderr
    assert not (out / "summary.json").exists()


def test_a_shard_starting_while_another_merges_waits_for_the_merge(
    case: ScaleCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shard 1 starting again while shard 0 merges: its removal of the earlier summaries waits for the merge, so
    no summary.json is left vouching for the results it is about to redo. Before, it removed them between the
    merge's checks and its writing, and summary.json then held the old shard 1's results (ok for series whose
    outputs its rerun removed)."""
    import threading

    import innereye_batch.writers.summary as summary_writer
    from innereye_batch.pipeline.run_summaries import remove_earlier_summaries

    out = tmp_path / "out"
    assert not run_batch(case.options(out, shard=Shard(1, 2))).merged
    write_summary = summary_writer.write_summary
    starting = threading.Thread(target=remove_earlier_summaries, args=(case.options(out, shard=Shard(1, 2)),))
    waited = []

    def merging(*args: object, **kwargs: object) -> object:  # the merge, between its checks and its writing
        starting.start()
        starting.join(timeout=1.0)
        waited.append(starting.is_alive())
        return write_summary(*args, **kwargs)

    monkeypatch.setattr(summary_writer, "write_summary", merging)
    assert run_batch(case.options(out, shard=Shard(0, 2))).merged
    starting.join()
    assert waited == [True]  # shard 1's start waited for the summary lock
    assert not (out / "summary.json").exists() and not (out / "summary.shard-1-of-2.json").exists()
    assert (out / "summary.shard-0-of-2.json").exists()


def test_an_earlier_summary_that_cannot_be_removed_stops_the_run_with_its_name(case: ScaleCase, tmp_path: Path) -> None:
    """A folder where the earlier summary.json was: the run stops before planning with a message naming it (a
    usage error, exit 2). Before, IsADirectoryError's traceback came out instead."""
    out = tmp_path / "out"
    (out / "summary.json").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"cannot remove an earlier run's summary\.json from .*: Is a directory"):
        run_batch(case.options(out))
