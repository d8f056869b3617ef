"""The writer pool in processes (as on a GPU run): the same outputs as threads, and a dying writer fails only its
own series."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from innereye_batch.pipeline.run import RunOptions, run_batch
from innereye_batch.pipeline.writer_pool import MAX_WRITER_PROCESSES, writer_processes_for
from innereye_batch.writers.registry import OutputFormat, register_format, unregister_format
from tests.factory import write_series
from tests.pipeline.cohort import labels_from_nifti, model_folder

DOOMED = "doomed"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_folder(tmp_path_factory.mktemp("model") / "model", members=1)


def _scans(root: Path) -> Path:
    scans = root / "scans"
    for i in range(3):
        write_series(scans / f"s{i}", shape=(8, 16, 16), seed=10 + i, series_description=f"series {i}")
    return scans


def _by_series(report: Any) -> dict[str, Any]:
    return {r.key: r for r in report.results}


def test_writer_processes_write_what_threads_write(tmp_path: Path, model: Path) -> None:
    scans = _scans(tmp_path)
    runs = {}
    for processes in (0, 2):
        out = tmp_path / f"out{processes}"
        options = RunOptions(model=model, input=scans, output=out, device="cpu", workers=0, writer_processes=processes)
        report = run_batch(options)
        assert report.exit_code == 0, [r.reason for r in report.results]
        runs[processes] = (out, _by_series(report))
    (threads_out, threads), (processes_out, processes) = runs[0], runs[2]
    assert sorted(threads) == sorted(processes) and len(threads) == 3
    for key in threads:
        assert processes[key].status == "ok"
        assert processes[key].structures == threads[key].structures
        assert sorted(processes[key].outputs) == sorted(threads[key].outputs)
        np.testing.assert_array_equal(
            labels_from_nifti(processes_out / key / "segmentation.nii.gz"),
            labels_from_nifti(threads_out / key / "segmentation.nii.gz"),
        )
        # the preview decoded the image again in the writer process: the same picture
        np.testing.assert_array_equal(
            np.asarray(Image.open(processes_out / key / "preview.png")),
            np.asarray(Image.open(threads_out / key / "preview.png")),
        )
        record = json.loads((processes_out / key / "predictions.json").read_text())
        assert record["structures"] == json.loads((threads_out / key / "predictions.json").read_text())["structures"]
    # summary.json reports the run's peak memory: this process, and the largest writer process
    peaks = json.loads((processes_out / "summary.json").read_text())["run"]["peak_memory_gib"]
    assert peaks["host"] > 0.1  # torch alone takes more
    assert 0.02 < peaks["workers"] < peaks["host"] * 4


def test_writer_processes_write_classifications(tmp_path: Path) -> None:
    """A classification goes to a writer process with its image (its header makes predictions.json and the
    explanations): every image ok, and the same probabilities and maps as with threads."""
    repo = Path(__file__).resolve().parents[2]
    runs = {}
    for processes in (0, 2):
        out = tmp_path / f"out{processes}"
        options = RunOptions(
            model=repo / "sample_data" / "cxr_model",
            input=repo / "sample_data" / "cxr_scans",
            output=out,
            device="cpu",
            workers=0,
            writer_processes=processes,
            explain=("gradcam",),
        )
        report = run_batch(options)
        assert report.exit_code == 0, [r.reason for r in report.results]
        runs[processes] = out
    documents = sorted(runs[2].glob("*/predictions.json"))
    assert len(documents) == 5
    for path in documents:
        twin = runs[0] / path.parent.name
        found, expected = json.loads(path.read_text()), json.loads((twin / "predictions.json").read_text())
        assert found["classification"] == expected["classification"] and found["input"] == expected["input"]
        np.testing.assert_array_equal(
            np.load(path.parent / "explanation.npz")["gradcam"], np.load(twin / "explanation.npz")["gradcam"]
        )


def _die_on_doomed(path: Path, prediction: Any, context: Any) -> None:
    """A writer that kills its own process for the doomed series (as the kernel's OOM killer would), leaving a
    temporary file as a write cut off by a writer's death leaves it (a sibling's, stopped when the pool broke)."""
    if prediction.item.primary.series_description == DOOMED:
        (path.parent / ".tmp-999999-sibling.dcm").write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    path.write_text(prediction.item.key)


@pytest.fixture
def dying_format() -> Any:
    output = OutputFormat(
        name="dies-on-doomed",
        filename="dies.txt",
        tasks=frozenset({"segmentation"}),
        write=_die_on_doomed,
        description="test format",
        default=False,
    )
    register_format(output)
    yield output
    unregister_format(output.name)


def test_a_dying_writer_process_fails_only_its_own_series(tmp_path: Path, model: Path, dying_format: Any) -> None:
    scans = _scans(tmp_path)
    doomed = write_series(scans / "doomed", shape=(8, 16, 16), seed=30, series_description=DOOMED)
    out = tmp_path / "out"
    options = RunOptions(
        model=model,
        input=scans,
        output=out,
        device="cpu",
        workers=0,
        writer_processes=2,
        formats=("nifti", dying_format.name),
    )
    report = run_batch(options)
    results = _by_series(report)
    assert len(results) == 4 and report.exit_code == 1
    failed = results.pop(doomed.series_instance_uid)
    assert failed.status == "failed" and "writer process failed" in failed.reason
    assert not (out / doomed.series_instance_uid / "segmentation.nii.gz").exists()  # no output without its record
    for key, result in results.items():  # the writes that shared the broken pool were tried again, and landed
        assert result.status == "ok", result.reason
        assert (out / key / "dies.txt").read_text() == key
    summary = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in summary["series"]} == {"ok", "failed"}
    # the dead writer's temporary files stayed in the folder until a later unsharded run
    assert [p.name for p in out.rglob(".tmp-*")] == []


def test_writer_processes_are_chosen_for_gpu_runs_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert writer_processes_for([cpu], workers=2, requested=None) == 0
    chosen = writer_processes_for([gpu], workers=2, requested=None)
    cores = len(os.sched_getaffinity(0))
    assert chosen == max(1, min(MAX_WRITER_PROCESSES, cores - 4))
    assert writer_processes_for([gpu], workers=2, requested=0) == 0
    assert writer_processes_for([cpu], workers=2, requested=3) == 3


def test_the_writers_option(tmp_path: Path, model: Path) -> None:
    from typer.testing import CliRunner

    from innereye_batch.cli import app

    generated = write_series(tmp_path / "scans" / "a", shape=(8, 16, 16), seed=3)
    args = ["run", "--model", str(model), "--input", str(tmp_path / "scans"), "--device", "cpu", "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "out"), "--writers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / generated.series_instance_uid / "rtstruct.dcm").is_file()
    bad = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "bad"), "--writers", "many"])
    assert bad.exit_code == 2 and "--writers" in bad.output


def test_a_writer_process_outlives_the_thread_that_started_it() -> None:
    """A process pool starts its workers in the thread that submits first: with --devices, a replica thread that
    ends when its device has no work left. PR_SET_PDEATHSIG fires on that thread's end and killed the writers
    mid-write (every write in flight then failed and was redone alone); the writers watch the run's pid."""
    import threading

    from innereye_batch.pipeline.writer_pool import Writers

    writers = Writers(context=None, threads=0, processes=1)  # type: ignore[arg-type]
    started: list[int] = []
    thread = threading.Thread(target=lambda: started.append(writers.pool.submit(os.getpid).result()))
    thread.start()
    thread.join()
    assert writers.pool.submit(os.getpid).result(timeout=60) == started[0]  # the same writer, still alive
    writers.pool.shutdown(wait=True)


def test_an_interrupted_run_does_not_wait_forever_for_a_lost_slot() -> None:
    """An interrupt between a submission's taking its slot and its callback's being attached leaves a slot that
    nothing gives back: leaving on that interrupt, the pool stops waiting once no write is running (it waited
    forever, holding the output lock against every later run)."""
    import threading

    from innereye_batch.pipeline.writer_pool import Writers

    writers = Writers(context=None, threads=1)  # type: ignore[arg-type]
    writers.slots.acquire()  # what the interrupted submission took

    def leave_on_interrupt() -> None:
        writers.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    leaving = threading.Thread(target=leave_on_interrupt, daemon=True)
    leaving.start()
    leaving.join(timeout=60)  # a liveness bound, not a speed goal: it returns within a poll period
    assert not leaving.is_alive()


def test_an_interrupt_while_the_last_writes_run_lets_them_finish() -> None:
    """Ctrl-C (or SIGTERM) after the run's loop, while the pool waits for its last writes: it surfaced inside the
    wait, the pool was closed under the writes in flight, and they failed half-written. Now they finish (and are
    recorded), then the interrupt is raised."""
    import threading

    from innereye_batch.pipeline.writer_pool import Writers

    writers = Writers(context=None, threads=1)  # type: ignore[arg-type]
    writers.slots.acquire()  # the slot of the write in flight
    release = threading.Event()
    finished: list[bool] = []

    def write() -> None:
        release.wait(60)
        finished.append(True)
        writers.slots.release()  # as its result is recorded

    writers._track(writers.pool.submit(write))  # type: ignore[arg-type]
    acquire = writers.slots.acquire
    calls: list[int] = []

    def interrupted_once(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            release.set()  # the write goes on while the interrupt is handled
            raise KeyboardInterrupt
        return acquire(*args, **kwargs)

    writers.slots.acquire = interrupted_once  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        writers.__exit__(None, None, None)
    assert finished == [True] and len(calls) > 1
