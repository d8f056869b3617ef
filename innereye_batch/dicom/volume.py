"""Decode pixel data of a scanned series into a Volume: float32 (z, y, x) voxels with their geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.series import SeriesInfo


@dataclass(frozen=True, eq=False)
class Volume:
    """A decoded series: voxels (z, y, x) float32 in modality units (e.g. HU), its grid, and its source."""

    array: np.ndarray
    geometry: Geometry
    series: SeriesInfo

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """Source SOP Instance UIDs in slice order, for references from derived objects (DICOM-SEG)."""
        return self.series.sop_instance_uids
