"""Segmentation: decode a work item into a (channels, z, y, x) volume, predict a label map on its grid.

On the device: turn the image to the model's orientation when it states one (``Geometry.reorientation``: axes
swapped and reversed, the label map turned back at the end), normalise each channel, resample to the model's
spacing, the ensemble's mean softmax posteriors (sliding window), back to the source grid, smoothing when
configured, argmax, summed-probability rules (they need the posteriors): only the uint8 label map leaves the
device. On the CPU, off the device loop (``SegmentationPrediction.finished``, called by the writers' thread): largest
connected component, slice-exclusion rules, hole filling and each structure's size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from innereye_batch.boxes import nonzero_box
from innereye_batch.dicom.geometry import Geometry, Reorientation
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.errors import InnerEyeBatchError
from innereye_batch.model.spec import ModelPackage, PostProcessing
from innereye_batch.results import StructureStats
from innereye_batch.tasks.base import Decoded, Prediction, PredictorOptions, Unmatched, WorkItem

if TYPE_CHECKING:
    import torch

    from innereye_batch.dicom.regrid import Regridding


NON_FINITE_OUTPUTS = (
    "the model's outputs hold NaN or infinite values (from its weights, the image, or an overflow under --amp): "
    "no label map is made from them"
)


@dataclass(frozen=True, eq=False)
class VolumeInput:
    """A decoded work item: float32 (channels, z, y, x) in modality units on the primary channel's grid."""

    image: torch.Tensor
    geometry: Geometry
    """The grid of ``image``: the primary series' own, or the regular grid an irregular stack was resampled onto."""
    regridding: Regridding | None = None
    """For a resampled primary series: how to bring a label map back onto its source slices."""

    def pin_memory(self) -> VolumeInput:
        return replace(self, image=self.image.pin_memory())


_COVERAGE_TOLERANCE = 0.01
"""Voxels (of the secondary channel) by which the primary grid's outermost voxel centres may lie beyond the
secondary's outer voxel faces: rounding of positions, nothing a model would see."""


def uncovered_share(geometry: Geometry, reference: Geometry) -> float:
    """The share of ``reference``'s voxel centres (the primary channel's grid) that lie outside ``geometry``'s
    voxels (a secondary channel's grid): 0 when it covers them all, 1 when it covers none."""
    shape_xyz = np.array(reference.shape[::-1], dtype=np.float64)
    axes = [np.arange(n, dtype=np.float64) for n in shape_xyz]
    to_secondary = np.linalg.inv(geometry.lps_affine()) @ reference.lps_affine()
    limit = np.array(geometry.shape[::-1], dtype=np.float64) - 0.5 + _COVERAGE_TOLERANCE
    corners = np.array(
        [[x, y, z, 1.0] for x in (0, shape_xyz[0] - 1) for y in (0, shape_xyz[1] - 1) for z in (0, shape_xyz[2] - 1)]
    )
    mapped = (corners @ to_secondary.T)[:, :3]
    if np.all(mapped >= -0.5 - _COVERAGE_TOLERANCE) and np.all(mapped <= limit):
        return 0.0  # both grids are boxes: the corners inside, every voxel centre is
    inside = np.ones(reference.shape, dtype=bool)
    x, y = np.meshgrid(axes[0], axes[1])
    for z, plane in enumerate(axes[2]):  # a slice at a time: a slice's points, not the volume's
        points = np.stack([x, y, np.full_like(x, plane), np.ones_like(x)], axis=-1) @ to_secondary.T
        inside[z] = np.all((points[..., :3] >= -0.5 - _COVERAGE_TOLERANCE) & (points[..., :3] <= limit), axis=-1)
    return 1.0 - float(inside.mean())


def _align_channel(array: np.ndarray, geometry: Geometry, reference: Geometry, what: str) -> np.ndarray:
    """Resample a secondary channel onto the primary channel's grid (linear, in patient space); raises
    InnerEyeBatchError where it does not cover that grid: the model would see made-up values there."""
    if geometry.is_close(reference):
        return array
    uncovered = uncovered_share(geometry, reference)
    if uncovered > 0:
        raise InnerEyeBatchError(
            f"{what} covers only {math.floor(1000 * (1 - uncovered)) / 10}% of the first channel's grid (shape "
            f"{reference.shape}, spacing {tuple(round(s, 4) for s in reference.spacing)} mm; this channel's is "
            f"{geometry.shape}, {tuple(round(s, 4) for s in geometry.spacing)} mm): the model would see made-up "
            "values where it has none; the channels must cover the same region"
        )
    import SimpleITK as sitk

    moving = geometry.to_sitk(array)
    target = reference.to_sitk(np.zeros(reference.shape, dtype=np.float32))
    resampled = sitk.Resample(moving, target, sitk.Transform(), sitk.sitkLinear, float(array.min()))
    return sitk.GetArrayFromImage(resampled).astype(np.float32, copy=False)


def decode_volumes(item: WorkItem) -> VolumeInput:
    """Decode every channel of ``item`` and stack them on the primary channel's grid."""
    import torch

    from innereye_batch.dicom.volume import load_volume

    primary = load_volume(item.primary)
    channels = [primary.array]
    for series in item.inputs[1:]:
        if series.frame_of_reference_uid != item.primary.frame_of_reference_uid:
            raise InnerEyeBatchError(
                f"series {series.key} is in frame of reference {series.frame_of_reference_uid}, not the first "
                f"channel's {item.primary.frame_of_reference_uid}: the inputs must be registered"
            )
        other = load_volume(series)
        what = f"channel {len(channels) + 1} (series {series.key})"
        channels.append(_align_channel(other.array, other.geometry, primary.geometry, what))
    return VolumeInput(torch.from_numpy(np.stack(channels)), primary.geometry, primary.regridding)


_COUNT_CHUNK = 2**20
"""Voxels counted at once by ``structure_stats`` (3x faster than the whole map on a 300x512x512 CT)."""


def structure_stats(
    labels: np.ndarray, geometry: Geometry, structure_names: Sequence[str]
) -> tuple[StructureStats, ...]:
    """Voxel count and volume (mL) of label i = ``structure_names[i - 1]`` in a (z, y, x) label map."""
    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"label map shape {labels.shape} does not match geometry shape {geometry.shape}")
    counts = np.zeros(len(structure_names) + 1, np.int64)
    occupied = nonzero_box(labels)  # structures fill a fraction of the grid: only their box is counted
    inside = labels[occupied] if occupied is not None else labels[:0]
    step = max(1, _COUNT_CHUNK // max(1, math.prod(inside.shape[1:])))
    for start in range(0, inside.shape[0], step):  # in slabs: bincount widens its input to int64 first
        part = np.bincount(inside[start : start + step].ravel(), minlength=len(counts))
        if len(part) > len(counts):
            raise ValueError(f"label map holds label {len(part) - 1} but there are {len(structure_names)} structures")
        counts += part
    counts[0] += labels.size - inside.size  # background, all of it outside the box
    voxel_ml = math.prod(geometry.spacing) / 1000.0
    return tuple(
        StructureStats(name=name, voxel_count=int(counts[i]), volume_ml=float(counts[i]) * voxel_ml)
        for i, name in enumerate(structure_names, start=1)
    )


@dataclass(frozen=True, eq=False)
class SegmentationPrediction:
    """A label map on the source grid: 0 background, i the i-th structure of the model."""

    item: WorkItem
    labels: np.ndarray
    """uint8 (z, y, x) on ``geometry``: rows in the primary series' slice order, unless it was resampled."""
    geometry: Geometry
    structures: tuple[StructureStats, ...]
    timings: dict[str, float] = field(default_factory=dict)
    regridding: Regridding | None = None
    """Set when the primary series was resampled onto a regular grid (gantry tilt, variable spacing)."""
    image: np.ndarray | None = None
    """The primary channel it was predicted from, float32 (z, y, x) in modality units, for outputs that show it
    (preview.png); None when not kept (such outputs decode the series again)."""
    refined: bool = True
    """False straight from the device: ``finished()`` still has the CPU post-processing to do."""
    postprocessing: PostProcessing | None = None
    structure_names: tuple[str, ...] = ()
    peak_memory_gib: dict[str, float] = field(default_factory=dict)
    """Peak memory of its device work (``engine.memory.SeriesPeak``): ``host``, ``cuda:N``."""
    device: str = ""
    """Where the networks ran (``cpu``, ``cuda:0``); empty when not known."""
    precision: str = ""
    """What they computed in (``engine.sliding_window.precision_of``); empty when not known."""
    reoriented_to: str = ""
    """The model's orientation the image was turned to for inference (``labels`` are back on ``geometry``); empty
    when it was fed as stored."""

    task: ClassVar[str] = "segmentation"

    def finished(self) -> SegmentationPrediction:
        """The prediction with its CPU post-processing done (largest component, slice exclusion, holes) and its
        structures sized; itself when already done. Its label map is refined in place (the prediction owns it)."""
        if self.refined:
            return self
        from innereye_batch.engine.postprocess import refine_labels

        start = time.perf_counter()
        assert self.postprocessing is not None
        labels = refine_labels(self.labels, self.postprocessing, self.structure_names, self.geometry.direction_matrix)
        structures = structure_stats(labels, self.geometry, self.structure_names)
        timings = {**self.timings, "refine": time.perf_counter() - start}
        return replace(self, labels=labels, structures=structures, timings=timings, refined=True)

    def findings(self) -> dict[str, Any]:
        return {"structures": self.structures}

    def labels_on_source_slices(self) -> np.ndarray:
        """The label map on the primary series' own slices (what DICOM outputs that reference them need)."""
        return self.labels if self.regridding is None else self.regridding.to_source(self.labels)


@dataclass
class SegmentationPredictor:
    """The loaded networks of a segmentation package on one device; ``predict`` once per work item.

    Networks are loaded once per run by the caller (``model.checkpoints.load_networks``), never per item.
    """

    package: ModelPackage
    networks: list[torch.nn.Module]
    device: torch.device
    patch_batch: int = 0
    """Patches per forward pass; 0 chooses from the device (``engine.sliding_window.auto_patch_batch``)."""
    amp: bool = False
    channels_last: bool = True
    """Run the networks in the channels-last 3-D memory format (measured faster with oneDNN, in fp32 and bf16;
    BENCHMARKS.md); kept off for programs that cannot be converted."""

    chosen_batches: dict[tuple[object, ...], int] = field(default_factory=dict)
    """Automatic patch batches chosen so far (one per patch shape): kept for the whole run, so that every series
    sends the networks batches of one shape (cuDNN autotunes each new shape)."""

    task: ClassVar[str] = "segmentation"

    def __post_init__(self) -> None:
        from innereye_batch.engine.cpu_convolution import use_onednn_conv3d
        from innereye_batch.engine.ensemble import to_channels_last

        if self.channels_last:
            self.channels_last = to_channels_last(self.networks)
        if self.device.type == "cpu":
            use_onednn_conv3d(self.networks)
        # cuDNN's autotuning (cudnn.benchmark) stays as torch leaves it, off: on an H200 its one-off search cost the
        # run's first series 3.4 s at 4 patches per pass and 29 s at 32, and made the passes after it 1-2 % faster
        # (BENCHMARKS.md); cuDNN's own heuristics choose as well for these convolutions.

    @property
    def batch_size(self) -> int:
        return 1  # a volume fills the device; patches are batched inside (patch_batch)

    @property
    def decoder(self) -> Callable[[WorkItem], VolumeInput]:
        return decode_volumes

    def predict_batch(self, items: Sequence[WorkItem], decoded: Sequence[Decoded]) -> list[Prediction]:
        """Device work only: the predictions still need ``finished()`` (the writers' thread calls it)."""
        return [self._on_device(item, one) for item, one in zip(items, decoded, strict=True)]

    def predict(self, item: WorkItem, decoded: Decoded | None = None) -> SegmentationPrediction:
        """The finished label map of one work item (decoded here when ``decoded`` is None)."""
        return self._on_device(item, decoded).finished()

    def _on_device(self, item: WorkItem, decoded: Decoded | None) -> SegmentationPrediction:
        from innereye_batch.engine.memory import SeriesPeak
        from innereye_batch.engine.sliding_window import precision_of

        volume = decoded if isinstance(decoded, VolumeInput) else decode_volumes(item)
        spec = self.package.segmentation
        with SeriesPeak(self.device) as peak:
            labels, timings = self.label_map(volume.image, volume.geometry)
        image = volume.image[0].numpy()  # a view of the decoded host tensor: no copy
        return SegmentationPrediction(
            item,
            labels,
            volume.geometry,
            (),
            timings,
            regridding=volume.regridding,
            image=image,
            refined=False,
            postprocessing=spec.postprocessing,
            structure_names=spec.structure_names,
            peak_memory_gib=peak.gib,
            device=str(self.device),
            precision=precision_of(self.device, self.amp),
            reoriented_to=(spec.orientation or "") if self.reorientation(volume.geometry) is not None else "",
        )

    def label_map(self, image: torch.Tensor, geometry: Geometry) -> tuple[np.ndarray, dict[str, float]]:
        """Label map (z, y, x) uint8 on ``geometry``'s grid for a (channels, z, y, x) image, before the CPU
        post-processing (``engine.postprocess.refine_labels``), and stage timings."""
        import torch

        from innereye_batch.engine.ensemble import predict_posteriors
        from innereye_batch.engine.postprocess import posterior_labels, resampled_labels
        from innereye_batch.engine.preprocess import normalise, resample

        spec = self.package.segmentation
        turn = self.reorientation(geometry)
        if turn is not None:  # predicted on the model's axes, the label map turned back at the end
            geometry = turn.geometry(geometry)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        image = image.to(self.device, non_blocking=True).float()
        if turn is not None:
            image = turn.turn(image)
        channels = [normalise(image[c], norm, channel_index=c) for c, norm in enumerate(spec.normalisation)]
        prepared = torch.stack(channels)
        if spec.target_spacing is not None:
            prepared = resample(prepared, geometry.spacing, spec.target_spacing, mode="trilinear")
        self._sync()
        timings["preprocess"] = time.perf_counter() - start

        start = time.perf_counter()
        posteriors = predict_posteriors(
            self.networks,
            prepared,
            spec.inference,
            num_outputs=spec.num_outputs,
            patch_batch=self.patch_batch,
            amp=self.amp,
            activation=spec.activation,
            channels_last=self.channels_last,
            chosen_batches=self.chosen_batches,
        )
        if not bool(torch.isfinite(posteriors).all()):  # argmax would read NaN as background: an empty map
            raise ValueError(NON_FINITE_OUTPUTS)
        self._sync()
        timings["infer"] = time.perf_counter() - start

        start = time.perf_counter()
        if spec.target_spacing is not None:  # back onto the source grid, a slab of slices at a time
            labels = resampled_labels(
                posteriors,
                geometry.shape,
                spec.target_spacing,
                geometry.spacing,
                spec.postprocessing,
                spec.structure_names,
            )
        else:
            labels = posterior_labels(posteriors, geometry.spacing, spec.postprocessing, spec.structure_names)
        if turn is not None:
            labels = turn.turn_back(labels)
        timings["postprocess"] = time.perf_counter() - start
        return labels, timings

    def reorientation(self, geometry: Geometry) -> Reorientation | None:
        """How a series on ``geometry`` is turned to the model's ``orientation`` before inference; None when it
        is fed as stored (no orientation stated, or already the model's). Raises InnerEyeBatchError for a stack the
        plan refuses (axes about 45 degrees between the patient's, or turned when the model does not reorient)."""
        spec = self.package.segmentation
        if spec.orientation is None:
            return None
        if geometry.axes_ambiguous():
            raise InnerEyeBatchError(
                f"one of its axes lies about 45 degrees between two of the patient's ({spec.orientation} wanted)"
            )
        turn = geometry.reorientation(spec.orientation)
        if turn.is_identity:
            return None
        if not spec.reorient:
            raise InnerEyeBatchError(f"its axes run {geometry.axis_codes()}, the model's {spec.orientation}")
        return turn

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class SegmentationTask:
    """Segmentation models: one work item per series (per study for multi-channel models), one label map each."""

    name: str = "segmentation"

    def plan_items(self, series: Sequence[SeriesInfo], package: ModelPackage) -> tuple[list[WorkItem], list[Unmatched]]:
        from innereye_batch.tasks.channels import plan_work

        return plan_work(series, package.channels)

    def predictor(
        self, package: ModelPackage, networks: list[torch.nn.Module], device: torch.device, options: PredictorOptions
    ) -> SegmentationPredictor:
        return SegmentationPredictor(package, networks, device, patch_batch=options.patch_batch, amp=options.amp)


TASK = SegmentationTask()
