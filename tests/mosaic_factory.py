"""Write Siemens-like and UIH-like mosaic files with pydicom, with the 3-D volumes a correct reader must recover.

``write_siemens_mosaics`` writes one mosaic file per volume: N slices as tiles of a G x G grid (G = ceil(sqrt N)),
a CSA image header (0029,1010) in Siemens' CSA2 layout holding NumberOfImagesInMosaic and SliceNormalVector,
(0019,100A), and ImagePositionPatient at the corner of the whole mosaic as Siemens writes it.
``write_uih_grid`` writes one UIH grid (NumberOfImagesInGrid (0065,1050), one item per tile in (0065,1051)
with its ImagePositionPatient, no top-level position). The returned truth follows SimpleITK's convention:
slices ascending along cross(row, column), whichever way the scanner stacked them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from innereye_batch.dicom.geometry import Geometry
from tests.factory import SOP_CLASS_BY_MODALITY, recode_file, unit


@dataclass(frozen=True)
class GeneratedMosaics:
    """Mosaic files written to disk (one per volume, in volume order) and the truth about them."""

    folder: Path
    paths: tuple[Path, ...]
    geometry: Geometry
    """Of every volume: slices ascending along cross(row, column), origin at the lowest slice."""
    volumes: tuple[np.ndarray, ...]
    """Expected (z, y, x) voxels of each file's volume, in the geometry's slice order."""
    tiles: tuple[np.ndarray, ...]
    """Each file's slices in tile (acquisition) order: tile k holds slice k of the scanner's stack."""
    mosaic_size: tuple[int, int]
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    study_instance_uid: str
    frame_of_reference_uid: str


def csa2_header(tags: dict[str, tuple[str, Sequence[object]]]) -> bytes:
    """A Siemens CSA2 ("SV10") header holding ``tags``: name -> (VR, values), each value written as text."""
    out = bytearray(b"SV10" + b"\x04\x03\x02\x01" + struct.pack("<2I", len(tags), 77))
    for name, (vr, values) in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0, len(values), 77)
        for value in values:
            text = f"{value}".encode() + b"\x00"
            out += struct.pack("<4i", len(text), len(text), 77, len(text)) + text
            out += b"\x00" * (-len(text) % 4)
    return bytes(out)


def _dataset(
    manufacturer: str, rows: int, columns: int, series_uid: str, study_uid: str, for_uid: str, modality: str
) -> Dataset:
    sop_uid = generate_uid()
    sop_class = SOP_CLASS_BY_MODALITY[modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "PAT001", "19700101", "O"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.PositionReferenceIndicator = "1", "ACC1", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.Manufacturer = "20240517", "103000", modality, manufacturer
    ds.SeriesNumber, ds.SeriesDescription = 5, "ep2d_bold"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _tiles(slices: int, tile: tuple[int, int], seed: int, volumes: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3000, size=(slices, *tile))
    base += 40 * np.arange(slices)[:, None, None]  # every slice differs in mean too
    return [(base + 500 * t).astype(np.uint16) for t in range(volumes)]


def _mosaic_image(tiles: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    count, rows, columns = tiles.shape
    image = np.zeros((grid[0] * rows, grid[1] * columns), dtype=tiles.dtype)
    for k in range(count):
        r, c = divmod(k, grid[1])
        image[r * rows : (r + 1) * rows, c * columns : (c + 1) * columns] = tiles[k]
    return image


def _geometry(
    lowest: np.ndarray, row: np.ndarray, col: np.ndarray, slices: int, tile: tuple[int, int], spacing: Sequence[float]
) -> Geometry:
    """SimpleITK's geometry of the volume: slices ascending along cross(row, col) from ``lowest``."""
    return Geometry(
        shape=(slices, *tile),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=tuple(float(v) for v in lowest),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in np.stack([row, col, np.cross(row, col)], axis=1).ravel()),
    )


def write_siemens_mosaics(
    folder: Path,
    *,
    slices: int = 10,
    tile: tuple[int, int] = (12, 10),
    spacing: tuple[float, float, float] = (3.5, 2.0, 2.5),
    first_position: Sequence[float] = (-100.0, -110.0, -20.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    descending: bool = False,
    volumes: int = 1,
    slice_normal: Sequence[float] | str | None = "auto",
    csa_count: int | str | None = "auto",
    tag_count: int | str | None = "auto",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"),
    spacing_between_slices: bool = True,
    slice_thickness: bool = True,
    acquisition_numbers: Sequence[int | None] | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    seed: int = 0,
    modality: str = "MR",
    series_instance_uid: str | None = None,
    edit: Callable[[int, Dataset], None] | None = None,
) -> GeneratedMosaics:
    """Write ``volumes`` Siemens mosaic files of ``slices`` tiles each into ``folder`` and return the truth.

    ``first_position`` is the position of slice 1 (tile 0); ``descending`` stacks the slices against
    cross(row, column) (SliceNormalVector negated, as Siemens sagittal mosaics do). ``slice_normal``,
    ``csa_count`` and ``tag_count`` override what the CSA header and (0019,100A) say ("auto": the truth; None:
    left out). ``spacing`` is (between slices, between rows, between columns). ``acquisition_numbers`` gives
    each file's AcquisitionNumber (None: left out; default 1, 2, ...); InstanceNumbers run 1, 2, ...
    ``edit(t, dataset)`` changes file t's dataset before it is written. ``modality`` "CT" writes the same
    mosaic as CT Image Storage (for runs with a CT model).
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = unit(row_direction), unit(column_direction)
    sign = -1.0 if descending else 1.0
    normal = sign * np.cross(row, col)
    grid = math.ceil(math.sqrt(slices))
    size = (grid * tile[0], grid * tile[1])
    first = np.asarray(first_position, dtype=np.float64)
    corner = first - row * spacing[2] * (size[1] - tile[1]) / 2 - col * spacing[1] * (size[0] - tile[0]) / 2
    series_uid, study_uid, for_uid = series_instance_uid or generate_uid(), generate_uid(), generate_uid()
    tags: dict[str, tuple[str, Sequence[object]]] = {"AcquisitionMatrixText": ("SH", [f"{tile[0]}*{tile[1]}"])}
    if csa_count is not None:
        tags["NumberOfImagesInMosaic"] = ("US", [slices if csa_count == "auto" else csa_count])
    if slice_normal is not None:
        tags["SliceNormalVector"] = ("FD", [f"{v:.8f}" for v in (normal if slice_normal == "auto" else slice_normal)])
    paths, sops = [], []
    all_tiles = _tiles(slices, tile, seed, volumes)
    for t, tiles in enumerate(all_tiles):
        ds = _dataset("SIEMENS", size[0], size[1], series_uid, study_uid, for_uid, modality)
        ds.ImageType = list(image_type)
        numbers = acquisition_numbers or list(range(1, volumes + 1))
        if numbers[t] is not None:
            ds.AcquisitionNumber = numbers[t]
        ds.InstanceNumber = t + 1
        ds.ImagePositionPatient = [f"{v:.8f}" for v in corner]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        if slice_thickness:
            ds.SliceThickness = f"{spacing[0]:g}"
        if spacing_between_slices:
            ds.SpacingBetweenSlices = f"{spacing[0]:g}"
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", csa2_header(tags))
        if tag_count is not None:
            count = slices if tag_count == "auto" else tag_count
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", count)
        ds.PixelData = _mosaic_image(tiles, (grid, grid)).tobytes()
        if edit is not None:
            edit(t, ds)
        path = folder / f"MOSAIC{t + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if transfer_syntax != ExplicitVRLittleEndian:
            recode_file(path, transfer_syntax)
        paths.append(path)
        sops.append(str(ds.SOPInstanceUID))
    lowest = first if not descending else first + (slices - 1) * spacing[0] * normal
    geometry = _geometry(lowest, row, col, slices, tile, spacing)
    order = slice(None, None, -1) if descending else slice(None)
    return GeneratedMosaics(
        folder=folder,
        paths=tuple(paths),
        geometry=geometry,
        volumes=tuple(t[order].astype(np.float32) for t in all_tiles),
        tiles=tuple(all_tiles),
        mosaic_size=size,
        series_instance_uid=series_uid,
        sop_instance_uids=tuple(sops),
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
    )


def write_uih_grid(
    folder: Path,
    *,
    slices: int = 7,
    tile: tuple[int, int] = (8, 9),
    spacing: tuple[float, float, float] = (4.2, 3.5, 3.5),
    first_position: Sequence[float] = (-114.0, -112.0, -6.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    descending: bool = False,
    volumes: int = 1,
    item_count: int | None = None,
    seed: int = 0,
) -> GeneratedMosaics:
    """Write ``volumes`` UIH grid files (``slices`` tiles, ceil(sqrt N) per row) and return the truth."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = unit(row_direction), unit(column_direction)
    normal = (-1.0 if descending else 1.0) * np.cross(row, col)
    per_row = math.ceil(math.sqrt(slices))
    grid = (math.ceil(slices / per_row), per_row)
    size = (grid[0] * tile[0], grid[1] * tile[1])
    first = np.asarray(first_position, dtype=np.float64)
    positions = [first + k * spacing[0] * normal for k in range(slices)]
    series_uid, study_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    paths, sops = [], []
    all_tiles = _tiles(slices, tile, seed, volumes)
    for t, tiles in enumerate(all_tiles):
        ds = _dataset("UIH", size[0], size[1], series_uid, study_uid, for_uid, "MR")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
        ds.InstanceNumber = t + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.SpacingBetweenSlices = f"{spacing[0]:g}"
        items = []
        for position in positions[: item_count if item_count is not None else slices]:
            item = Dataset()
            item.ImagePositionPatient = [f"{v:.8f}" for v in position]
            items.append(item)
        block = ds.private_block(0x0065, "Image Private Header", create=True)
        block.add_new(0x50, "DS", str(slices))
        block.add_new(0x51, "SQ", items)
        ds.PixelData = _mosaic_image(tiles, grid).tobytes()
        path = folder / f"UIH{t + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(str(ds.SOPInstanceUID))
    geometry = _geometry(positions[-1] if descending else positions[0], row, col, slices, tile, spacing)
    order = slice(None, None, -1) if descending else slice(None)
    return GeneratedMosaics(
        folder=folder,
        paths=tuple(paths),
        geometry=geometry,
        volumes=tuple(t[order].astype(np.float32) for t in all_tiles),
        tiles=tuple(all_tiles),
        mosaic_size=size,
        series_instance_uid=series_uid,
        sop_instance_uids=tuple(sops),
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
    )
