"""`--executor ray`: a local Ray instance with two actors writes what one plain run writes, also when an actor's
process is killed part-way through."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from innereye_batch.pipeline.ray_executor import RayOptions
from innereye_batch.pipeline.run import RunReport, run_batch
from tests.pipeline.scale_helpers import ScaleCase, assert_same_as_reference, make_case, statuses, summary

pytest.importorskip("ray")
TWO_ACTORS = RayOptions(actors=2, cpus_per_actor=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> ScaleCase:
    return make_case(tmp_path_factory.mktemp("ray"))


def test_two_ray_actors_write_what_one_run_writes(case: ScaleCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_batch(case.options(out, executor="ray", ray=TWO_ACTORS))
    assert report.exit_code == 1
    assert_same_as_reference(case, out)
    assert summary(out)["run"]["device"] == "ray: 2 actor(s) on cpu"
    again = run_batch(case.options(out, executor="ray", ray=TWO_ACTORS))  # a rerun skips what is done
    assert sum(r.reason == "already done with this model and input" for r in again.results) == 6


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _actor_processes() -> list[int]:
    """The actors' own processes. An actor's decode worker is forked from it and inherits its process title, so
    a process whose parent is an actor is left out."""
    titled = set()
    for pid in _descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"ray::InferenceActor"):
            titled.add(pid)
    return sorted(pid for pid in titled if _parent(pid) not in titled)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor's process through /proc")
def test_a_killed_actor_still_gives_a_complete_correct_folder(case: ScaleCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome: list[RunReport | BaseException] = []

    def run() -> None:
        try:
            outcome.append(run_batch(case.options(out, executor="ray", ray=TWO_ACTORS)))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while not list(out.glob("*/done.json")) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        actors = _actor_processes()
        assert len(actors) == 2, "the run must have started two actors"
        done_at_kill = len(list(out.glob("*/done.json")))
        os.kill(actors[0], signal.SIGKILL)
    finally:  # a failed assertion must not leave the run, and its Ray session, to the next test
        thread.join(timeout=600)
    assert 0 < done_at_kill < 6, "the kill must land part-way through the run"
    report = outcome[0]
    assert isinstance(report, RunReport), report
    assert "actor death" in summary(out)["run"]["device"]
    assert_same_as_reference(case, out)


def test_actors_the_cluster_has_no_room_for_are_stopped_and_the_run_goes_on(
    case: ScaleCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ray-actors 2 on a cluster with one free CPU: the second actor was never placed, and the run waited for
    it for ever before its first item. Now those not ready within ACTOR_READY_SECONDS are stopped and the
    others run every item."""
    import ray

    from innereye_batch.pipeline import ray_executor

    monkeypatch.setattr(ray_executor, "ACTOR_READY_SECONDS", 120.0)  # the one placed is ready in seconds
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "out"
        report = run_batch(case.options(out, executor="ray", ray=TWO_ACTORS))
    finally:
        ray.shutdown()
    assert report.exit_code == 1  # the case's broken series, as in a plain run
    assert_same_as_reference(case, out)
    assert summary(out)["run"]["device"] == "ray: 1 actor(s) on cpu"


HANG_HOOK = """
import os

_series = os.environ.get("INNEREYE_TEST_HANG_SERIES")
if _series:  # this test's hook, in the Ray worker processes only: the series' decoder never returns
    import time

    import innereye_batch.tasks.segmentation as _segmentation

    _decode = _segmentation.decode_volumes

    def _hanging(item):
        while item.primary.series_instance_uid == _series:
            time.sleep(1)
        return _decode(item)

    _segmentation.decode_volumes = _hanging
"""


@pytest.mark.timeout(420)
def test_a_series_whose_decoding_never_returns_fails_alone_after_the_decode_timeout(
    case: ScaleCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An actor decoded in its own thread with no limit: a codec that never returned held the run for ever. Now
    each series is decoded in a worker process of the actor, stopped after --decode-timeout."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HANG_HOOK)  # Python imports it at start, in each Ray worker
    stuck = case.cohort.good[0].series_instance_uid
    monkeypatch.setenv("INNEREYE_TEST_HANG_SERIES", stuck)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *sys.path]))
    out = tmp_path / "out"
    report = run_batch(case.options(out, executor="ray", ray=TWO_ACTORS, decode_timeout_s=15))
    assert report.exit_code == 1
    reference, found = statuses(case.reference), statuses(out)
    assert found.keys() == reference.keys()
    for key, (status, reason) in found.items():
        if key == stuck:
            assert status == "failed" and "took longer than 15 s (--decode-timeout)" in reason, reason
            assert not (out / key / "done.json").exists()
        else:
            assert (status, reason) == reference[key]
