"""One series through the model on the device: normalise, resample, predict (ensemble), restore, post-process."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.model.spec import ModelPackage


@dataclass
class SegmentationRunner:
    """The loaded networks of a package on one device; call it once per series.

    Networks are loaded once per run by the caller (``model.checkpoints.load_networks``), never per series.
    """

    package: ModelPackage
    networks: list[torch.nn.Module]
    device: torch.device
    patch_batch: int = 1
    amp: bool = False

    def __call__(self, image: torch.Tensor, geometry: Geometry) -> tuple[np.ndarray, dict[str, float]]:
        """Label map (z, y, x) uint8 on ``geometry``'s grid for a (channels, z, y, x) image, and stage timings."""
        from innereye_batch.engine.ensemble import predict_posteriors
        from innereye_batch.engine.postprocess import postprocess
        from innereye_batch.engine.preprocess import normalise, resample, resample_to_shape

        package = self.package
        timings: dict[str, float] = {}
        start = time.perf_counter()
        image = image.to(self.device, non_blocking=True).float()
        channels = [normalise(image[c], spec, channel_index=c) for c, spec in enumerate(package.normalisation)]
        prepared = torch.stack(channels)
        spacing = geometry.spacing
        if package.target_spacing is not None:
            prepared = resample(prepared, spacing, package.target_spacing, mode="trilinear")
            spacing = package.target_spacing
        self._sync()
        timings["preprocess"] = time.perf_counter() - start

        start = time.perf_counter()
        posteriors = predict_posteriors(
            self.networks,
            prepared,
            package.inference,
            num_outputs=package.num_outputs,
            patch_batch=self.patch_batch,
            amp=self.amp,
        )
        self._sync()
        timings["infer"] = time.perf_counter() - start

        start = time.perf_counter()
        if package.target_spacing is not None:
            posteriors = resample_to_shape(
                posteriors, geometry.shape, package.target_spacing, geometry.spacing, mode="trilinear"
            )
            spacing = geometry.spacing
        labels = postprocess(posteriors, spacing, package.postprocessing, package.structure_names)
        timings["postprocess"] = time.perf_counter() - start
        return labels, timings

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
