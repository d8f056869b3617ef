"""`--executor ray`: one inference actor per GPU (or per group of CPUs) of a Ray cluster, fed by this driver.

The driver (this process) scans, plans and holds the output lock as in any run; it then starts the actors, each
of which loads the model once (and checks that it computes the driver's results fingerprint: the same model and
options on every node), and hands them planned jobs one by one as they finish earlier ones (two in flight per
actor: a threaded actor decodes and writes one item while the model runs the other). Each actor runs
``process_item``, so its outputs go straight into the shared output folder with the same atomic writes and done
records as a local run; the driver records results, progress and the summary.

Each series is decoded in a worker process of the actor (``--decode-timeout``: killed after that long, the series
failed; a decoder that dies takes only its series). A killed actor (its process killed, its node lost) costs only
time: its items in flight go back to the queue and run again on a live actor (alone, so that an item that kills
its worker cannot take others down with it); Ray restarts the actor; an item in flight during two deaths fails
with that reason. A rerun skips what is done.
Without ``--ray-address`` a local Ray instance is started (no dashboard, only the CPUs and GPUs the actors need)
and shut down at the end. The output folder and the input must be on a file system every node sees at the same
path (the documented assumption).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from innereye_batch.errors import InnerEyeBatchError, UsageError
from innereye_batch.pipeline.process import Job, item_result
from innereye_batch.pipeline.state import outputs_removed, remove_stale_temporaries
from innereye_batch.results import ItemResult
from innereye_batch.tasks.base import PredictorOptions
from innereye_batch.writers.registry import OutputFormat, WriterOptions

if TYPE_CHECKING:
    from innereye_batch.pipeline.executors import RunContext
    from innereye_batch.pipeline.progress import RunProgress
    from innereye_batch.pipeline.run import RunOptions

IN_FLIGHT_PER_ACTOR = 2
OBJECT_STORE_BYTES = 100 * 2**20
"""A local instance's object store: jobs and results are small (headers, paths, numbers), never images."""
ACTOR_READY_SECONDS = 900.0
"""How long the actors may take to be placed on the cluster and to load the model: those not ready by then are
killed and the run goes on with the others (a cluster busy with other work, --ray-actors more than it holds)."""


@dataclass(frozen=True)
class RayOptions:
    """How `--executor ray` runs."""

    address: str | None = None
    """--ray-address: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); None: a local one."""
    actors: int = 0
    """--ray-actors: how many inference actors; 0: one per GPU of the cluster, else one per ``cpus_per_actor``."""
    cpus_per_actor: int = 2
    """--ray-cpus-per-actor: CPUs each actor reserves (its torch threads, decoding and writing)."""
    max_attempts: int = 2
    """How many actor deaths an item may be in flight for before it fails."""


@dataclass(frozen=True)
class _Shared:
    """What the actors take from the driver's run (picklable)."""

    formats: tuple[OutputFormat, ...]
    model_fp: str
    writer_options: WriterOptions
    predictor_options: PredictorOptions


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'innereye-batch[ray]'") from None
    return ray


class InferenceActor:
    """A Ray actor: the model loaded once on the actor's device; ``process`` runs one planned job end to end."""

    def __init__(self, options: RunOptions, shared: _Shared) -> None:
        import warnings

        import ray
        import torch

        from innereye_batch.engine.memory import limit_device_memory
        from innereye_batch.model.checkpoints import load_networks
        from innereye_batch.model.package import load_model_package
        from innereye_batch.pipeline.run import make_predictor, run_fingerprint

        warnings.simplefilter("ignore")  # libraries quote patient data in warnings; results carry the problems
        self.package = load_model_package(options.model)
        fingerprint = run_fingerprint(self.package, options)
        if fingerprint != shared.model_fp:
            raise InnerEyeBatchError(
                f"the model folder {options.model} on this node is not the driver's (results fingerprint "
                f"{fingerprint[:16]} instead of {shared.model_fp[:16]})"
            )
        on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()  # Ray made its GPU the only visible one
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        limit_device_memory(self.device, shared.predictor_options.gpu_memory_gib)
        networks = load_networks(self.package, device=self.device, trust_checkpoint=options.trust_checkpoint)
        self.predictor = make_predictor(self.package, networks, self.device, shared.predictor_options)
        self.formats = shared.formats
        self.model_fp = shared.model_fp
        self.writer_options = shared.writer_options
        self.decode_timeout = options.decode_timeout_s
        self.inference = threading.Lock()

    def ready(self) -> str:
        """The actor's device and process, once the model is loaded."""
        return f"{self.device} (pid {os.getpid()})"

    def process(self, job: Job) -> ItemResult:
        from innereye_batch.pipeline.process import process_item

        return process_item(
            job,
            self.predictor,
            self.formats,
            self.package,
            self.model_fp,
            self.writer_options,
            inference_lock=self.inference,
            decode_timeout=self.decode_timeout,
        )


def _start(ray: Any, options: RayOptions) -> bool:
    """Connect to the cluster, or start a local instance; True when this process started it."""
    if ray.is_initialized():
        return False
    if options.address:
        try:
            ray.init(address=options.address, log_to_driver=False, configure_logging=False)
        except ConnectionError as error:
            raise UsageError(
                f"--ray-address {options.address}: cannot join the Ray cluster ({error}); on a node of the cluster, "
                "--ray-address auto finds it"
            ) from None
        return False
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    actors = options.actors or max(gpus, 1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=actors * options.cpus_per_actor,
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=OBJECT_STORE_BYTES,
    )
    return True


def _actor_resources(ray: Any, options: RayOptions) -> tuple[int, float]:
    """How many actors, and the share of a GPU each gets (0 on a cluster without GPUs)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    actors = options.actors or (gpus if gpus else max(cpus // options.cpus_per_actor, 1))
    return actors, (min(1.0, gpus / actors) if gpus else 0.0)


def run_ray(context: RunContext, jobs: Sequence[Job], options: RunOptions, progress: RunProgress) -> str:
    """Every job through inference actors on Ray; returns the device description for the summary."""
    ray = _import_ray()
    started_here = _start(ray, options.ray)
    actors: list[Any] = []
    try:
        count, gpu_share = _actor_resources(ray, options.ray)
        remote = ray.remote(InferenceActor).options(
            num_cpus=options.ray.cpus_per_actor,
            num_gpus=gpu_share,
            max_concurrency=IN_FLIGHT_PER_ACTOR,
            max_restarts=3,
        )
        shared = _Shared(tuple(context.formats), context.model_fp, context.writer_options, context.predictor_options)
        actors = [remote.remote(options, shared) for _ in range(count)]
        live, devices, unplaced = _await_actors(ray, actors)
        late = f"; {unplaced} not ready within {ACTOR_READY_SECONDS:g} s, stopped" if unplaced else ""
        progress.event("ray", message=f"{len(live)} Ray actor(s) ready: {', '.join(devices)}{late}")
        progress.start(len(jobs))
        driver = _Driver(ray, context, options, progress, live)
        driver.run(jobs)
        kinds = sorted({d.split(" ")[0] for d in devices})
        deaths = f", {driver.deaths} actor death(s), their items retried" if driver.deaths else ""
        return f"ray: {len(live)} actor(s) on {','.join(kinds)}{deaths}"
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _await_actors(ray: Any, actors: list[Any]) -> tuple[list[Any], list[str], int]:
    """The actors whose model loaded within ``ACTOR_READY_SECONDS``, their devices, and how many were not ready
    by then (killed: the cluster had no room for them); InnerEyeBatchError with the reason when none was ready."""
    refs = [actor.ready.remote() for actor in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_READY_SECONDS)
    live, devices, errors, unplaced = [], [], [], 0
    for actor, ref in zip(actors, refs, strict=True):
        if ref not in ready:
            ray.kill(actor, no_restart=True)
            unplaced += 1
            continue
        try:
            devices.append(ray.get(ref))
            live.append(actor)
        except ray.exceptions.RayError as error:
            errors.append(_cause(error))
    if not live:
        reason = (
            errors[0]
            if errors
            else (
                f"none was ready within {ACTOR_READY_SECONDS:g} s: the cluster has no free resources for "
                "--ray-actors actors of --ray-cpus-per-actor CPUs each"
            )
        )
        raise InnerEyeBatchError(f"no Ray actor could load the model: {reason}")
    return live, devices, unplaced


def _cause(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


class _Driver:
    """Hands jobs to live actors as they finish earlier ones, retries the items of actors that died."""

    def __init__(
        self, ray: Any, context: RunContext, options: RunOptions, progress: RunProgress, actors: list[Any]
    ) -> None:
        self.ray = ray
        self.context = context
        self.options = options
        self.progress = progress
        self.live = list(actors)
        self.load: collections.Counter[int] = collections.Counter()
        self.isolated: set[int] = set()
        """Actors running an item that was in flight when an actor died: they get nothing else meanwhile."""
        self.in_flight: dict[Any, tuple[Any, Job]] = {}
        self.probes: dict[Any, Any] = {}
        """Readiness calls to actors that lost an item: back to work once they answer (Ray restarted them)."""
        self.attempts: collections.Counter[str] = collections.Counter()
        self.deaths = 0

    def run(self, jobs: Sequence[Job]) -> None:
        queue = collections.deque(jobs)
        try:
            while (queue and not self.context.stopping) or self.in_flight:
                self._assign(queue)
                if not self.in_flight and not self.probes:
                    break  # no live actor left
                waiting = [*self.in_flight, *self.probes]
                ready, _ = self.ray.wait(waiting, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in self.probes:
                        self._probed(ref)
                    else:
                        self._returned(ref, queue)
        except BaseException:
            self.context.interrupted.set()
            self._drain()  # items in flight finish and are recorded, as a local run's writes do
            raise
        if queue and not self.context.stopping:
            for job in queue:
                self.context.fail(job, item_result(job.item.primary, "failed", "not run: every Ray actor died"))

    def _assign(self, queue: collections.deque[Job]) -> None:
        for actor in self.live:
            key = id(actor)
            while queue and not self.context.stopping and key not in self.isolated:
                job = queue[0]
                suspect = self.attempts[job.item.key] > 0
                if self.load[key] >= IN_FLIGHT_PER_ACTOR or (suspect and self.load[key] > 0):
                    break
                queue.popleft()
                self.in_flight[actor.process.remote(job)] = (actor, job)
                self.load[key] += 1
                if suspect:
                    self.isolated.add(key)

    def _returned(self, ref: Any, queue: collections.deque[Job]) -> None:
        actor, job = self.in_flight.pop(ref)
        self.load[id(actor)] -= 1
        self.isolated.discard(id(actor))
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:
            self.deaths += 1
            key = job.item.key
            self.attempts[key] += 1
            remove_stale_temporaries(self.options.output, [job.folder])
            self.progress.event("ray_actor_died", message=f"a Ray actor died while processing {key}: {_cause(error)}")
            if self.attempts[key] >= self.options.ray.max_attempts:
                outputs_removed(job.folder)  # no output without its done record: what a dead actor left goes
                reason = (
                    f"the Ray worker process died {self.attempts[key]} times while this series was in it "
                    f"(killed, out of memory, or a crash): {_cause(error)}"
                )
                self.context.fail(job, item_result(job.item.primary, "failed", reason))
            else:
                queue.appendleft(job)
            if actor in self.live:  # back to work once Ray has restarted it
                self.live.remove(actor)
                self.probes[actor.ready.remote()] = actor
            return
        except self.ray.exceptions.RayError as error:  # an error of the call itself, not of the item
            self.context.fail(job, item_result(job.item.primary, "failed", f"ray: {_cause(error)}"))
            return
        self.context.finish(result)

    def _probed(self, ref: Any) -> None:
        actor = self.probes.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as error:
            self.progress.event("ray_actor_lost", message=f"a Ray actor is gone for good: {_cause(error)}")
            return
        self.live.append(actor)

    def _drain(self) -> None:
        for ref, (_, job) in list(self.in_flight.items()):
            try:
                self.context.finish(self.ray.get(ref))
            except self.ray.exceptions.RayError:  # no output without its done record: what a dead actor left goes
                remove_stale_temporaries(self.options.output, [job.folder])
                outputs_removed(job.folder)
        self.in_flight.clear()
