"""Merging shard summaries: the same summary files a single run writes, and clear refusals when they disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.dicom.series import SkippedFile
from innereye_batch.pipeline.shards import Shard, plan_fingerprint
from innereye_batch.pipeline.summarize import (
    SummaryMergeError,
    merge_if_last,
    merge_shard_summaries,
    write_shard_summary,
)
from innereye_batch.results import ItemResult, StructureStats
from innereye_batch.text import printable
from innereye_batch.writers.run_report import run_report_html
from innereye_batch.writers.summary import summary_csv_text, write_summary

KEYS = [f"1.2.3.{i}" for i in range(12)] + ["1.2.3.9.stack2", "odd key/with\x1bescape"]


def _result(key: str) -> ItemResult:
    index = KEYS.index(key)
    if index % 5 == 1:
        return ItemResult(key, key, "1.2", "CT", "failed", reason=f"series {key}: 1 slice missing")
    if index % 5 == 2:
        return ItemResult(key, key, "1.2", "MR", "skipped", reason="needs Modality=CT")
    structures = (StructureStats("liver", 100 + index, 12.5 + index), StructureStats("spine", 0, 0.0))
    return ItemResult(
        key,
        key,
        "1.2",
        "CT",
        "ok",
        structures=structures,
        timings={"load": 0.25, "infer": 1.5, "write": 0.125},
        outputs={"nifti": f"{key}/segmentation.nii.gz"},
    )


def _written(out: Path, shard: Shard, results: list[ItemResult], **kwargs: Any) -> Path:
    """``write_shard_summary``, with every output its results list present in ``out`` (the merge checks them)."""
    for result in results:
        for path in result.outputs.values():
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_bytes(b"label map")
    return write_shard_summary(out, shard, results, **kwargs)


FILES = [SkippedFile(Path(f"p{i}/junk{i}.txt"), "not a DICOM file") for i in range(4)]


def _run_info(**extra: Any) -> dict[str, Any]:
    return {
        "tool": "innereye-batch",
        "tool_version": "0.1.0",
        "model_name": "M",
        "model_task": "segmentation",
        "model_fingerprint": "m" * 64,
        "results_fingerprint": "r" * 64,
        "plan_fingerprint": plan_fingerprint(KEYS),
        "device": "cpu",
        "formats": ["nifti"],
        "started": "2026-01-01T10:00:00+00:00",
        "finished": "2026-01-01T10:05:00+00:00",
        "stage_seconds": {"load": 1.0, "wall": 300.0},
        **extra,
    }


def _write_shards(out: Path, count: int, **run_extra: Any) -> None:
    for k in range(count):
        shard = Shard(k, count)
        results = [_result(key) for key in KEYS if shard.owns(key)]
        files = [f for f in FILES if shard.owns(f"file:{f.path}")]
        info = _run_info(started=f"2026-01-01T10:0{k}:00+00:00", finished=f"2026-01-01T10:1{k}:00+00:00", **run_extra)
        _written(out, shard, results, run_info=info, skipped_files=files)


def test_merge_writes_what_a_single_run_writes(tmp_path: Path) -> None:
    merged_dir, single_dir = tmp_path / "merged", tmp_path / "single"
    merged_dir.mkdir()
    single_dir.mkdir()
    _write_shards(merged_dir, 3)
    merged = merge_shard_summaries(merged_dir)
    assert [p.name for p in merged.paths] == ["summary.json", "summary.csv", "report.html"]
    original = {printable(key): key for key in KEYS}  # summaries store text from files printable
    order = [original[r.key] for r in merged.results]
    assert sorted(order) == sorted(KEYS)
    shard_of_each = [next(k for k in range(3) if Shard(k, 3).owns(key)) for key in order]
    assert shard_of_each == sorted(shard_of_each), "records in shard order"

    write_summary(single_dir, merged.results, run_info=_run_info(), skipped_files=merged.skipped_files)
    document, single = (json.loads((d / "summary.json").read_text()) for d in (merged_dir, single_dir))
    assert document["series"] == single["series"]  # every field of every record, read back and written again
    assert (
        document["counts"]
        == single["counts"]
        == {"ok": 8, "failed": 3, "skipped": 3, "not_run": 0, "total": 14} | {"skipped_files": 4}
    )
    assert sorted(document["skipped_files"], key=str) == sorted(
        ({"path": str(f.path), "reason": f.reason} for f in FILES), key=str
    )
    assert (merged_dir / "summary.csv").read_bytes().decode() == summary_csv_text(merged.results, merged.skipped_files)
    assert "odd key/with\\x1bescape" in (merged_dir / "summary.csv").read_text()
    run = document["run"]
    assert run["started"] == "2026-01-01T10:00:00+00:00" and run["finished"] == "2026-01-01T10:12:00+00:00"
    assert run["stage_seconds"] == {"load": 3.0, "wall": 720.0}
    assert [s["shard"] for s in run["shards"]] == ["0/3", "1/3", "2/3"] and "shard" not in run
    html = (merged_dir / "report.html").read_text()
    assert html == run_report_html(merged_dir, merged.results, run)


def test_merge_refuses_a_missing_shard(tmp_path: Path) -> None:
    _write_shards(tmp_path, 3)
    (tmp_path / "summary.shard-1-of-3.json").unlink()
    with pytest.raises(SummaryMergeError, match=r"no summary yet from shard\(s\) 1/3 of 3"):
        merge_shard_summaries(tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_merge_refuses_shards_of_different_cohorts_or_models(tmp_path: Path) -> None:
    _write_shards(tmp_path, 2)
    changed = Shard(1, 2)
    results = [_result(key) for key in KEYS if changed.owns(key)]
    _written(tmp_path, changed, results, run_info=_run_info(plan_fingerprint="x" * 64))
    with pytest.raises(SummaryMergeError, match="different cohorts"):
        merge_shard_summaries(tmp_path)
    _written(tmp_path, changed, results, run_info=_run_info(results_fingerprint="y" * 64))
    with pytest.raises(SummaryMergeError, match="different models or output options"):
        merge_shard_summaries(tmp_path)


def test_merge_refuses_an_item_in_two_shards(tmp_path: Path) -> None:
    _write_shards(tmp_path, 2)
    first = Shard(0, 2)
    stray = next(key for key in KEYS if not first.owns(key))
    results = [_result(key) for key in KEYS if first.owns(key)] + [_result(stray)]
    _written(tmp_path, first, results, run_info=_run_info())
    with pytest.raises(SummaryMergeError, match=f"item {stray} is in the summaries of shards 0/2 and 1/2"):
        merge_shard_summaries(tmp_path)


def test_summarize_command_exit_codes_and_several_counts(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["summarize", "--output", str(tmp_path)])
    assert empty.exit_code == 1 and "no shard summaries" in _text(empty.output)
    _write_shards(tmp_path, 2)
    _write_shards(tmp_path, 3)
    both = runner.invoke(app, ["summarize", "--output", str(tmp_path)])
    assert both.exit_code == 1 and "--shards N" in _text(both.output)
    chosen = runner.invoke(app, ["summarize", "--output", str(tmp_path), "--shards", "3"])
    assert chosen.exit_code == 1, chosen.output  # three items failed
    assert "3 shard summaries merged: 8 ok, 3 failed, 3 skipped, 4 file(s) not used" in _text(chosen.output)
    missing = runner.invoke(app, ["summarize", "--output", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    negative = runner.invoke(app, ["summarize", "--output", str(tmp_path), "--shards", "-1"])
    assert negative.exit_code == 2 and "--shards" in negative.output  # a usage error, not "no summary"
    for command in (["run", "--model", ".", "--input", ".", "--output", "."], ["serve", "--model", "."]):
        nonsense = runner.invoke(app, [*command, "--max-voxels", "0"])
        assert nonsense.exit_code == 2 and "--max-voxels" in nonsense.output  # not every series failing on it


def _text(output: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_a_finishing_shard_does_not_merge_a_summary_left_by_an_earlier_run(tmp_path: Path) -> None:
    _write_shards(tmp_path, 2)
    mine = _run_info(plan_fingerprint="n" * 64)  # this run's cohort changed since shard 1 last ran
    results = [_result(key) for key in KEYS if Shard(0, 2).owns(key)]
    _written(tmp_path, Shard(0, 2), results, run_info=mine)
    merged, others = merge_if_last(tmp_path, Shard(0, 2), mine)
    assert merged is None and others == [Shard(1, 2)]
    assert not (tmp_path / "summary.json").exists()
    (tmp_path / "summary.shard-1-of-2.json").unlink()  # shard 1 of this run starts
    assert merge_if_last(tmp_path, Shard(0, 2), mine) == (None, [])
    _written(tmp_path, Shard(1, 2), [_result(k) for k in KEYS if Shard(1, 2).owns(k)], run_info=mine)
    merged, others = merge_if_last(tmp_path, Shard(1, 2), mine)
    assert merged is not None and others == [] and len(merged.results) == len(KEYS)


@pytest.mark.parametrize(
    "changed",
    [{"formats": ["nifti", "dicom-seg"]}, {"options": {"max_voxels": 100}}, {"tool_version": "0.2.0"}],
    ids=["formats", "options", "tool version"],
)
def test_a_finishing_shard_waits_for_a_summary_of_other_settings(tmp_path: Path, changed: dict[str, Any]) -> None:
    """Every field the merge checks, not the fingerprints alone: an earlier run's summary of other formats,
    options or tool version makes the finishing shard wait (the merge would refuse it), never fail."""
    _write_shards(tmp_path, 2)
    mine = _run_info(**changed)
    _written(tmp_path, Shard(0, 2), [_result(k) for k in KEYS if Shard(0, 2).owns(k)], run_info=mine)
    assert merge_if_last(tmp_path, Shard(0, 2), mine) == (None, [Shard(1, 2)])
    assert not (tmp_path / "summary.json").exists()


def test_merged_peak_memory_is_the_largest_of_any_shard(tmp_path: Path) -> None:
    peaks = [{"host": 0.3, "workers": 0.0}, {"host": 0.4, "workers": 0.2}, {"host": 0.35, "cuda:0": 7.5}]
    for k, peak in enumerate(peaks):
        shard = Shard(k, 3)
        info = _run_info(peak_memory_gib=peak)
        _written(tmp_path, shard, [_result(key) for key in KEYS if shard.owns(key)], run_info=info)
    run = json.loads((merge_shard_summaries(tmp_path).paths[0]).read_text())["run"]
    assert run["peak_memory_gib"] == {"host": 0.4, "workers": 0.2, "cuda:0": 7.5}
    assert [s["peak_memory_gib"] for s in run["shards"]] == peaks


def test_a_merge_refuses_summaries_whose_outputs_are_gone(tmp_path: Path) -> None:
    """`summarize` by hand (no scan, no model) merged a summary saying "ok" for an output since removed."""
    _write_shards(tmp_path, 2)
    gone = next(r for r in (_result(k) for k in KEYS) if r.status == "ok" and Shard(1, 2).owns(r.key))
    (tmp_path / gone.outputs["nifti"]).unlink()
    with pytest.raises(SummaryMergeError, match=r"shard 1/2's summary lists 1 output\(s\) no longer in the folder"):
        merge_shard_summaries(tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_a_merge_refuses_already_done_results_whose_folder_is_gone(tmp_path: Path) -> None:
    """An already-done series lists no outputs: `summarize` by hand merged it as done though its folder was gone."""
    from innereye_batch.pipeline.state import DONE_RECORD, safe_folder_name
    from innereye_batch.results import ALREADY_DONE

    done = [ItemResult(key, key, "1.2", "CT", "skipped", reason=ALREADY_DONE) for key in KEYS[:4]]
    for result in done:
        (tmp_path / safe_folder_name(result.key)).mkdir()
        (tmp_path / safe_folder_name(result.key) / DONE_RECORD).write_text("{}")
    for k in range(2):
        shard = Shard(k, 2)
        info = _run_info(plan_fingerprint=plan_fingerprint(KEYS[:4]))
        _written(tmp_path, shard, [r for r in done if shard.owns(r.key)], run_info=info)
    assert len(merge_shard_summaries(tmp_path).results) == 4
    (tmp_path / safe_folder_name(KEYS[2]) / DONE_RECORD).unlink()
    with pytest.raises(SummaryMergeError, match=rf"no longer in the folder \(e\.g\. {KEYS[2]}/done\.json\)"):
        merge_shard_summaries(tmp_path)
