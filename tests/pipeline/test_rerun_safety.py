"""Reruns from cron: one series' folder that cannot be cleared fails that series only, and no summary of an earlier
run outlives a run that stopped while planning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from innereye_batch.pipeline import state
from innereye_batch.pipeline.progress import RunProgress
from innereye_batch.pipeline.run import RunOptions, run_batch
from tests.factory import write_series
from tests.pipeline.cohort import model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model", members=1)


def _run(model: Path, scans: Path, out: Path) -> Any:
    return run_batch(RunOptions(model=model, input=scans, output=out, device="cpu", workers=0, formats=("nifti",)))


def test_an_earlier_output_that_cannot_be_removed_fails_only_its_series(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    damaged = write_series(scans / "a", shape=(8, 16, 16), seed=1)
    kept = write_series(scans / "b", shape=(8, 16, 16), seed=2)
    assert _run(model, scans, out).exit_code == 0
    damaged.paths[4].unlink()  # a slice lost: the series now fails at planning, and its old result is stale
    folder = out / damaged.series_instance_uid
    original = state.mark_not_done

    def owned_by_another_user(where: Path) -> None:
        if where == folder:
            raise PermissionError(13, "Permission denied", str(where / "segmentation.nii.gz"))
        original(where)

    monkeypatch.setattr(state, "mark_not_done", owned_by_another_user)

    report = _run(model, scans, out)  # it raised PermissionError from planning, and ran nothing

    results = {r.key: r for r in report.results}
    assert report.exit_code == 1 and len(results) == 2
    failed = results[damaged.series_instance_uid]
    assert failed.status == "failed" and "slice" in failed.reason
    assert "its earlier outputs could not be removed: PermissionError" in failed.reason
    assert results[kept.series_instance_uid].status == "skipped"
    summary = json.loads((out / "summary.json").read_text())  # this run's, not the earlier one (all ok)
    assert {r["key"]: r["status"] for r in summary["series"]}[damaged.series_instance_uid] == "failed"


def test_a_run_that_stops_while_planning_leaves_no_summary_of_an_earlier_run(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_series(scans / "a", shape=(8, 16, 16), seed=1)
    assert _run(model, scans, out).exit_code == 0
    assert (out / "summary.json").is_file()

    def broken_plan(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("innereye_batch.pipeline.run.plan_run", broken_plan)
    with pytest.raises(OSError):
        _run(model, scans, out)

    # the earlier summary said "ok" for a series this run may have been about to redo or fail
    assert not any((out / name).exists() for name in ("summary.json", "summary.csv", "report.html"))


def test_results_of_series_that_left_the_input_are_kept_and_named(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A series deleted from the input (or its files relabelled) kept its folder and done record, and no rerun said
    so: a reader taking every folder with a done record for a result of this input took it too (a reviewer's
    probe). Its results stay; the summary names them (``run.orphaned_results``), a run over part of the input
    (--series, --modality, a shard) does not look."""
    import shutil

    scans, out = tmp_path / "scans", tmp_path / "out"
    leaving = write_series(scans / "a", shape=(8, 16, 16), seed=1)
    staying = write_series(scans / "b", shape=(8, 16, 16), seed=2)
    first = _run(model, scans, out)
    assert first.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["run"]["orphaned_results"] == []
    shutil.rmtree(scans / "a")
    options = RunOptions(model=model, input=scans, output=out, device="cpu", workers=0, formats=("nifti",))
    assert run_batch(options, progress=RunProgress(log_json=True)).exit_code == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["orphaned_results"] == [leaving.series_instance_uid]
    assert [s["key"] for s in summary["series"]] == [staying.series_instance_uid]
    assert (out / leaving.series_instance_uid / "done.json").is_file()  # kept: never a result deleted for this
    (message,) = [e["message"] for e in events if e["event"] == "orphaned_results"]
    assert "1 folder(s)" in message and leaving.series_instance_uid in message
    chosen = RunOptions(
        model=model, input=scans, output=out, device="cpu", workers=0, formats=("nifti",),
        series_uids=(staying.series_instance_uid,),
    )  # fmt: skip
    assert run_batch(chosen).exit_code == 0
    assert "orphaned_results" not in json.loads((out / "summary.json").read_text())["run"]


def test_a_series_folder_that_is_a_symbolic_link_is_refused_and_nothing_outside_the_output_changes(
    tmp_path: Path, model: Path
) -> None:
    """A link planted in the output folder under a series' name led the run outside it: the series' outputs
    replaced files there, and a planted done record's listed file was deleted. Now that series fails, saying why,
    and the others run."""
    scans, out, elsewhere = tmp_path / "scans", tmp_path / "out", tmp_path / "elsewhere"
    linked = write_series(scans / "a", shape=(8, 16, 16), seed=1)
    plain = write_series(scans / "b", shape=(8, 16, 16), seed=2)
    elsewhere.mkdir()
    kept = {
        "notes.txt": b"precious",
        "segmentation.nii.gz": b"someone else's",
        f"{state.TEMP_PREFIX}1-x.nii.gz": b"not ours either",
    }
    for name, content in kept.items():
        (elsewhere / name).write_bytes(content)
    (elsewhere / "done.json").write_text(json.dumps({"outputs": {"nifti": {"file": "notes.txt", "size": 8}}}))
    out.mkdir()
    (out / linked.series_instance_uid).symlink_to(elsewhere, target_is_directory=True)

    report = _run(model, scans, out)

    results = {r.key: r for r in report.results}
    assert report.exit_code == 1
    assert results[plain.series_instance_uid].status == "ok"
    refused = results[linked.series_instance_uid]
    assert refused.status == "failed" and "symbolic link" in refused.reason, refused.reason
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir() if p.name != "done.json"} == kept
    assert (out / linked.series_instance_uid).is_symlink()


def test_the_summarys_skipped_file_reasons_do_not_name_the_input_folder(tmp_path: Path, model: Path) -> None:
    scans, out = tmp_path / "SMITH_JOHN", tmp_path / "out"
    write_series(scans / "a", shape=(8, 16, 16), seed=1)
    (scans / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    assert _run(model, scans, out).exit_code == 1  # the link's folder holds no series: an unreadable row too
    summary = json.loads((out / "summary.json").read_text())
    (skipped,) = summary["skipped_files"]
    assert skipped["path"] == "dangling.dcm" and "FileNotFoundError" in skipped["reason"], skipped
    assert "'dangling.dcm'" in skipped["reason"] and "SMITH_JOHN" not in skipped["reason"]
    assert all("SMITH_JOHN" not in row["reason"] for row in summary["series"])
    del summary["run"]["input"]  # the folder the run was given, as given
    assert "SMITH_JOHN" not in json.dumps(summary)


def test_a_series_refused_for_what_this_reading_met_keeps_its_result(tmp_path: Path, model: Path) -> None:
    """An unreadable file beside a done series (an I/O error, a folder's permissions: this reading, not the
    series' content) fails the series, but the result made of its unchanged files stays for the next run."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    series = write_series(scans / "a", shape=(8, 16, 16), seed=1)
    assert _run(model, scans, out).exit_code == 0
    (scans / "a" / "odd.dcm").write_bytes(b"")  # cannot be read: it may be a slice of the series
    (result,) = [r for r in _run(model, scans, out).results if r.key == series.series_instance_uid]
    assert result.status == "failed" and "unreadable_file_in_folder" in result.reason
    assert "removed" not in result.reason
    assert {p.name for p in (out / series.series_instance_uid).iterdir()} == {"done.json", "segmentation.nii.gz"}
    (scans / "a" / "odd.dcm").unlink()
    (again,) = _run(model, scans, out).results
    assert again.status == "skipped"  # still done: nothing was redone


def test_a_done_record_naming_a_file_outside_its_folder_vouches_for_nothing(tmp_path: Path) -> None:
    """A record of ours names plain files of its own folder: one naming ``../x`` or an absolute path (planted, or
    edited) made the series done on a file elsewhere, and --verify-outputs hashed that file."""
    folder = tmp_path / "out" / "1.2.3"
    folder.mkdir(parents=True)
    (tmp_path / "out" / "x").write_bytes(b"12345678")
    (folder / "segmentation.nii.gz").write_bytes(b"12345678")
    for name in ("../x", str(tmp_path / "out" / "x"), "segmentation.nii.gz"):
        record = {"input_fingerprint": "i", "model_fingerprint": "m", "outputs": {"nifti": {"file": name, "size": 8}}}
        (folder / state.DONE_RECORD).write_text(json.dumps(record))
        found = state.done_record(folder, "i", "m", ("nifti",))
        assert (found is not None) == (name == "segmentation.nii.gz"), name
