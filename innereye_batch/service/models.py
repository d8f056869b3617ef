"""The served models: each folder loaded once at start-up, its networks on the device, its predictor and formats.

A model is served under an id (``ID=DIR``, or ``<model_name>:1``). Jobs and predict requests use the loaded
networks through the same predictors as `run` (``pipeline.run.make_predictor``); a predictor that also explains
(Grad-CAM, ...) shares the networks of its model, so nothing is ever loaded again per request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innereye_batch.errors import UsageError
from innereye_batch.model.spec import ModelPackage
from innereye_batch.service.options import ModelSource, ServeOptions, default_model_id
from innereye_batch.tasks.base import Predictor, PredictorOptions
from innereye_batch.writers.registry import OutputFormat

if TYPE_CHECKING:
    import torch


@dataclass
class ServedModel:
    """One model folder, loaded, under its id."""

    model_id: str
    package: ModelPackage
    networks: list[torch.nn.Module]
    device: torch.device
    options: PredictorOptions
    formats: tuple[OutputFormat, ...]
    """What a job writes per item: every default output of the model's task."""
    results_fp: str
    """The fingerprint done records vouch for (the model and the output options, as `run` computes it)."""
    _predictors: dict[tuple[str, ...], Predictor] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def task(self) -> str:
        return self.package.task

    def predictor(self, explain: tuple[str, ...] = ()) -> Predictor:
        """The predictor of this model (the same object each time); with ``explain``, one that also computes
        those explanation methods, on the same networks."""
        from innereye_batch.pipeline.run import make_predictor

        with self._lock:
            if explain not in self._predictors:
                options = PredictorOptions(
                    patch_batch=self.options.patch_batch,
                    batch_size=self.options.batch_size,
                    amp=self.options.amp,
                    explain=explain,
                )
                self._predictors[explain] = make_predictor(self.package, self.networks, self.device, options)
            return self._predictors[explain]

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` lists about this model."""
        package = self.package
        record: dict[str, Any] = {
            "id": self.model_id,
            "name": package.name,
            "task": package.task,
            "version": package.version,
            "fingerprint": package.fingerprint(),
            "checkpoints": len(package.checkpoints),
            "channels": [{"name": c.name, "modality": c.modality} for c in package.channels],
            "device": str(self.device),
            "outputs": [f.name for f in self.formats],
        }
        if package.task == "segmentation":
            record["structures"] = [
                {"name": s.name, "colour": list(s.colour), "interpreted_type": s.interpreted_type}
                for s in package.segmentation.structures
            ]
        else:
            spec = package.classification
            record["classes"] = list(spec.classes)
            record["activation"] = spec.activation
            record["modalities"] = list(spec.modalities)
        return record


def load_served_models(options: ServeOptions) -> dict[str, ServedModel]:
    """Load every ``--model`` once, on the service's device; UsageError or ModelFolderError (exit code 2) for a
    folder that cannot be served or an id given twice."""
    from innereye_batch.engine.device import resolve_device
    from innereye_batch.engine.memory import limit_device_memory
    from innereye_batch.model.checkpoints import load_networks
    from innereye_batch.model.package import load_model_package
    from innereye_batch.pipeline.run import RunOptions, run_fingerprint
    from innereye_batch.writers.registry import resolve_formats

    device = resolve_device(options.device)
    limit_device_memory(device, options.gpu_memory_gib)
    predictor_options = PredictorOptions(patch_batch=options.patch_batch, batch_size=options.max_batch, amp=options.amp)
    served: dict[str, ServedModel] = {}
    for source in options.models:
        package = load_model_package(source.folder)
        model_id = source.model_id or default_model_id(package.name)
        if model_id in served:
            raise UsageError(f"model id {model_id} is given twice; name them with --model ID=DIR")
        networks = load_networks(package, device=device, trust_checkpoint=options.trust_checkpoint)
        run_options = RunOptions(
            model=source.folder, input=Path(), output=Path(), writer_options=options.writer_options
        )
        served[model_id] = ServedModel(
            model_id=model_id,
            package=package,
            networks=networks,
            device=device,
            options=predictor_options,
            formats=resolve_formats((), package.task),
            results_fp=run_fingerprint(package, run_options),
        )
        served[model_id].predictor()  # built now, so the first request finds it ready
    return served


def model_sources(values: Sequence[str]) -> tuple[ModelSource, ...]:
    """The ``--model`` options parsed (``DIR`` or ``ID=DIR``)."""
    return tuple(ModelSource.parse(v) for v in values)
