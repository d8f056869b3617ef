"""--verify-outputs: a rerun skips a done series only when its outputs' content is what was written (the sha256 its
done record holds), and redoes, and names, one whose outputs changed after they were written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.files import sha256_file
from innereye_batch.pipeline.state import DONE_RECORD, changed_outputs
from tests.factory import write_series
from tests.pipeline.cohort import model_folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    base = tmp_path_factory.mktemp("verify")
    uids = [
        write_series(base / "scans" / name, shape=(8, 16, 16), seed=seed).series_instance_uid
        for name, seed in (("a", 1), ("b", 2))
    ]
    return base / "scans", model_folder(base / "model", members=1), uids


def run(scans: Path, model: Path, out: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    result = CliRunner(env={"COLUMNS": "300"}).invoke(  # wide enough that the dry run's table folds no reason
        app,
        [
            "run",
            "--model",
            str(model),
            "--input",
            str(scans),
            "--output",
            str(out),
            "--workers",
            "0",
            "--formats",
            "nifti,json",
            "--log-json",
            *extra,
        ],
    )
    assert "Traceback" not in result.output, result.output
    summary = out / "summary.json"  # a shard that does not finish last writes none
    return result.exit_code, result.output, json.loads(summary.read_text()) if summary.is_file() else {}


SAME_EVERY_RUN = ("model", "input", "structures", "inference")
"""predictions.json's sections that a rerun of one series on one model writes again equal (not its times)."""


def statuses(summary: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {row["key"]: (row["status"], row["reason"]) for row in summary["series"]}


def tamper_same_size(path: Path) -> None:
    """Change one digit of a structure's size in predictions.json at the same file size, as storage or a hand
    might."""
    text = path.read_text()
    at = next(i for i, ch in enumerate(text) if ch.isdigit() and i > text.index('"voxel_count"'))
    path.write_text(text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1 :])


def test_done_records_hold_each_outputs_sha256(inputs: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    scans, model, uids = inputs
    assert run(scans, model, tmp_path)[0] == 0
    folder = tmp_path / uids[0]
    record = json.loads((folder / DONE_RECORD).read_text())
    assert {fmt: entry["sha256"] for fmt, entry in record["outputs"].items()} == {
        "nifti": sha256_file(folder / "segmentation.nii.gz"),
        "json": sha256_file(folder / "predictions.json"),
    }
    assert changed_outputs(folder, record) == []
    (folder / "predictions.json").unlink()  # unreadable counts as changed, as does a record with no sha256
    del record["outputs"]["nifti"]["sha256"]
    assert changed_outputs(folder, record) == ["predictions.json", "segmentation.nii.gz"]


def test_an_output_changed_at_the_same_size_is_redone_only_when_verifying(
    inputs: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    scans, model, (changed, kept) = inputs
    assert run(scans, model, tmp_path)[0] == 0
    written = (tmp_path / changed / "predictions.json").read_bytes()
    tamper_same_size(tmp_path / changed / "predictions.json")
    assert (tmp_path / changed / "predictions.json").read_bytes() != written

    code, _, summary = run(scans, model, tmp_path)  # the default check: present, same size
    assert code == 0 and {s for s, _ in statuses(summary).values()} == {"skipped"}
    assert "changed_outputs" not in summary["run"]

    code, output, summary = run(scans, model, tmp_path, "--dry-run", "--verify-outputs")
    assert code == 0 and "predictions.json changed since written" in output

    code, output, summary = run(scans, model, tmp_path, "--verify-outputs")
    assert code == 0
    found = statuses(summary)
    assert found[changed] == ("ok", "") and found[kept][0] == "skipped"
    assert summary["run"]["changed_outputs"] == {changed: ["predictions.json"]}
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (event,) = [e for e in events if e.get("event") == "changed_outputs"]
    assert changed in event["message"] and "predictions.json" in event["message"]
    redone = json.loads((tmp_path / changed / "predictions.json").read_text())
    first = json.loads(written)
    assert [redone[k] for k in SAME_EVERY_RUN] == [first[k] for k in SAME_EVERY_RUN]  # as first written

    code, _, summary = run(scans, model, tmp_path, "--verify-outputs")  # now as recorded: nothing to redo
    assert code == 0 and {s for s, _ in statuses(summary).values()} == {"skipped"}
    assert summary["run"]["changed_outputs"] == {}


def test_a_record_of_an_earlier_version_without_sha256_is_redone_when_verifying(
    inputs: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    scans, model, (old, current) = inputs
    assert run(scans, model, tmp_path)[0] == 0
    record_path = tmp_path / old / DONE_RECORD
    record = json.loads(record_path.read_text())
    for entry in record["outputs"].values():
        del entry["sha256"]
    record_path.write_text(json.dumps(record))

    assert {s for s, _ in statuses(run(scans, model, tmp_path)[2]).values()} == {"skipped"}  # still done
    code, _, summary = run(scans, model, tmp_path, "--verify-outputs")
    assert code == 0 and statuses(summary)[old] == ("ok", "") and statuses(summary)[current][0] == "skipped"
    assert summary["run"]["changed_outputs"] == {old: ["predictions.json", "segmentation.nii.gz"]}
    assert all("sha256" in entry for entry in json.loads(record_path.read_text())["outputs"].values())


def test_the_merged_summary_of_shards_names_every_shards_changed_outputs(
    inputs: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """A reviewer's case: the merge took run.changed_outputs from the first shard's summary alone."""
    from innereye_batch.pipeline.shards import parse_shard

    _, model, _ = inputs
    scans = tmp_path / "scans"
    candidates = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 40)]  # one series in each shard
    uids = [next(u for u in candidates if parse_shard(f"{k}/2").owns(u)) for k in range(2)]
    for seed, uid in enumerate(uids):
        write_series(scans / str(seed), shape=(8, 16, 16), seed=seed, series_instance_uid=uid)
    for k in range(2):
        assert run(scans, model, tmp_path / "out", "--shard", f"{k}/2")[0] == 0
    for uid in uids:
        tamper_same_size(tmp_path / "out" / uid / "predictions.json")
    for k in range(2):
        code, _, _ = run(scans, model, tmp_path / "out", "--shard", f"{k}/2", "--verify-outputs")
        assert code == 0
    merged = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert merged["run"]["changed_outputs"] == {uid: ["predictions.json"] for uid in uids}
    assert {row["status"] for row in merged["series"]} == {"ok"}
