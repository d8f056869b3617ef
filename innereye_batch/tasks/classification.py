"""Classification: each 2-D projection image (each frame) is a work item; many go through one forward pass.

Decoding (in the loader workers): the image is read and mapped to the 16-bit PNG convention the model was trained
on (``dicom/projection.py``), then turned into the network input (``engine/classify_input.py``). On the device:
the ensemble's mean probabilities for a batch of images (``engine/classify.py``), the predicted label(s) at the
model's thresholds, and, when asked, explanation heat maps (``engine/explain.py``, gradients only there) brought
back onto each image's own grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.model.classification import ClassificationSpec
from innereye_batch.model.spec import ModelPackage
from innereye_batch.tasks.base import Decoded, Prediction, PredictorOptions, Unmatched, WorkItem

if TYPE_CHECKING:
    import torch

    from innereye_batch.dicom.projection import ProjectionImage


@dataclass(frozen=True, eq=False)
class ImageInput:
    """A decoded work item: the network input, and the mapped image when explanations need it."""

    tensor: torch.Tensor
    """float32 (input_channels, *input_size): what the network takes."""
    image: ProjectionImage
    """The image in the PNG convention and where it came from; its pixels are dropped (None-sized) unless kept."""

    def pin_memory(self) -> ImageInput:
        return replace(self, tensor=self.tensor.pin_memory())


@dataclass(frozen=True)
class ImageDecoder:
    """Picklable: a work item's image, mapped as the model was trained, as a network input."""

    spec: ClassificationSpec
    keep_pixels: bool = False
    """Keep the full-resolution mapped image (explanation overlays need it); otherwise only its header facts."""

    def __call__(self, item: WorkItem) -> ImageInput:
        from innereye_batch.dicom.projection import read_projection_images
        from innereye_batch.engine.classify_input import network_input

        ref = item.primary.slices[0]
        (image,) = read_projection_images(
            ref.path,
            modalities=self.spec.modalities,
            apply_voi=self.spec.intensity.apply_voi,
            scaling=self.spec.intensity.png_scaling,
            frames=[ref.frame or 0],
        )
        if image.sop_instance_uid != ref.sop_instance_uid:
            from innereye_batch.errors import SeriesError

            raise SeriesError(item.key, f"{ref.path}: SOPInstanceUID changed since the scan")
        tensor = network_input(image.pixels, self.spec)
        if not self.keep_pixels:
            image = replace(image, pixels=np.zeros((0, 0), dtype=np.uint16))
        return ImageInput(tensor, image)


@dataclass(frozen=True, eq=False)
class ClassificationPrediction:
    """Class probabilities of one image, the predicted label(s), and explanation maps when asked for."""

    item: WorkItem
    probabilities: dict[str, float]
    """Ensemble mean, by class name, in the model's class order."""
    labels: tuple[str, ...]
    """Predicted class(es): the most probable (softmax), or every class at or above its threshold (sigmoid)."""
    member_probabilities: tuple[dict[str, float], ...]
    """Each ensemble member's probabilities (for the record)."""
    image: ProjectionImage
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    """Explanation method -> float32 (y, x) map in [0, 1] on the image's own grid."""
    explained_class: str | None = None
    """The class the maps explain (the predicted one, or the most probable for sigmoid models)."""
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_gib: dict[str, float] = field(default_factory=dict)
    """Peak memory of the device work of the batch it was classified in (``engine.memory.SeriesPeak``)."""
    device: str = ""
    """Where the networks ran (``cpu``, ``cuda:0``); empty when not known."""
    precision: str = ""
    """What they computed in (``engine.sliding_window.precision_of``); empty when not known."""

    task: ClassVar[str] = "classification"

    def findings(self) -> dict[str, Any]:
        return {"probabilities": dict(self.probabilities), "labels": self.labels}

    def finished(self) -> ClassificationPrediction:
        return self


@dataclass
class ClassificationPredictor:
    """The loaded networks of a classification package on one device; ``predict_batch`` many images at once."""

    package: ModelPackage
    networks: list[torch.nn.Module]
    device: torch.device
    options: PredictorOptions = field(default_factory=PredictorOptions)

    task: ClassVar[str] = "classification"

    @property
    def spec(self) -> ClassificationSpec:
        return self.package.classification

    @property
    def batch_size(self) -> int:
        return max(1, self.options.batch_size)

    @property
    def decoder(self) -> Callable[[WorkItem], ImageInput]:
        return ImageDecoder(self.spec, keep_pixels=bool(self.options.explain))

    def predict(self, item: WorkItem, decoded: Decoded | None = None) -> ClassificationPrediction:
        one = decoded if isinstance(decoded, ImageInput) else self.decoder(item)
        (prediction,) = self._predict([item], [one])
        return prediction

    def predict_batch(self, items: Sequence[WorkItem], decoded: Sequence[Decoded]) -> list[Prediction]:
        """Probabilities, labels and (if asked) explanations of up to ``batch_size`` images in one pass."""
        return list(self._predict(items, decoded))

    def _predict(self, items: Sequence[WorkItem], decoded: Sequence[Decoded]) -> list[ClassificationPrediction]:
        from innereye_batch.engine.memory import SeriesPeak

        with SeriesPeak(self.device) as peak:
            predictions = self._classify(items, decoded)
        return [replace(p, peak_memory_gib=peak.gib) for p in predictions]

    def _classify(self, items: Sequence[WorkItem], decoded: Sequence[Decoded]) -> list[ClassificationPrediction]:
        import torch

        from innereye_batch.engine.classify import classify_batch, predicted_labels
        from innereye_batch.engine.sliding_window import precision_of

        inputs = [d for d in decoded if isinstance(d, ImageInput)]
        if len(inputs) != len(items):
            raise ValueError("classification needs one decoded image per work item")
        spec = self.spec
        start = time.perf_counter()
        batch = torch.stack([d.tensor for d in inputs]).to(self.device, non_blocking=True)
        result = classify_batch(
            self.networks, batch, activation=spec.activation, amp=self.options.amp, keep_members=True
        )
        if not bool(torch.isfinite(result.mean).all()):  # the batch fails; then each image alone (predict_loaded)
            raise ValueError("the model's outputs hold NaN or infinite values: no probabilities are made from them")
        labels = predicted_labels(result.mean, spec.classes, spec.activation, spec.thresholds)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        infer = (time.perf_counter() - start) / len(items)
        mean = result.mean.float().cpu().numpy()
        assert result.members is not None
        members = result.members.float().cpu().numpy()
        targets = [int(np.argmax(row)) for row in mean]
        heatmaps, explain = self._explain(batch, targets, inputs)
        precision = precision_of(self.device, self.options.amp)
        predictions = []
        for index, item in enumerate(items):
            predictions.append(
                ClassificationPrediction(
                    item=item,
                    probabilities=dict(zip(spec.classes, map(float, mean[index]), strict=True)),
                    labels=labels[index],
                    member_probabilities=tuple(
                        dict(zip(spec.classes, map(float, m[index]), strict=True)) for m in members
                    ),
                    image=inputs[index].image,
                    heatmaps=heatmaps[index],
                    explained_class=spec.classes[targets[index]] if heatmaps[index] else None,
                    timings={"infer": infer, **({"explain": explain} if heatmaps[index] else {})},
                    device=str(self.device),
                    precision=precision,
                )
            )
        return predictions

    def _explain(
        self, batch: torch.Tensor, targets: list[int], inputs: list[ImageInput]
    ) -> tuple[list[dict[str, np.ndarray]], float]:
        """Per image, method -> map on its own grid; and the seconds per image it took."""
        maps: list[dict[str, np.ndarray]] = [{} for _ in inputs]
        if not self.options.explain:
            return maps, 0.0
        from innereye_batch.engine.explain import explain_batch, to_image_grid

        spec = self.spec
        start = time.perf_counter()
        for method in self.options.explain:
            explained = explain_batch(
                self.networks,
                batch,
                targets,
                method,  # type: ignore[arg-type]
                layer=spec.gradcam_layer,
                mean=spec.channel_values("mean"),
                std=spec.channel_values("std"),
            )
            for index, one in enumerate(inputs):
                maps[index][method] = to_image_grid(explained[index], one.image.shape)
        return maps, (time.perf_counter() - start) / len(inputs)


@dataclass(frozen=True)
class ClassificationTask:
    """Classification models: every projection image (every frame) of an accepted modality is a work item."""

    name: str = "classification"

    def plan_items(self, series: Sequence[SeriesInfo], package: ModelPackage) -> tuple[list[WorkItem], list[Unmatched]]:
        accepted = package.classification.modalities
        items, unmatched = [], []
        for s in series:
            if s.modality.upper() not in accepted:
                if not s.modality and s.fatal_problems:  # nothing readable says what it is: fail, never skip
                    unmatched.append(Unmatched(s, "; ".join(str(p) for p in s.fatal_problems), True))
                else:
                    reason = f"Modality {s.modality or '(none)'} is not one the model takes ({', '.join(accepted)})"
                    unmatched.append(Unmatched(s, reason, False))
            elif len(s.slices) > 1:
                reason = f"{len(s.slices)} images in one stack: a classification model takes single 2-D images"
                unmatched.append(Unmatched(s, reason, True))
            else:
                items.append(WorkItem((s,)))
        return items, unmatched

    def predictor(
        self, package: ModelPackage, networks: list[torch.nn.Module], device: torch.device, options: PredictorOptions
    ) -> ClassificationPredictor:
        return ClassificationPredictor(package, networks, device, options)


TASK = ClassificationTask()
