"""Make real DICOM series with pydicom, with known geometry and voxels, for every test.

``write_series`` writes one single-frame file per slice and returns what a correct reader must recover:
the geometry (as SimpleITK defines it: slices ascending along cross(row, column)) and the voxels in
modality units. Options cover oblique orientations, slice order against InstanceNumber, shuffled and renamed
files, a removed slice, rescale slope/intercept and compressed transfer syntaxes.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from innereye_batch.dicom.geometry import Geometry

SOP_CLASS_BY_MODALITY = {"CT": CTImageStorage, "MR": MRImageStorage}


@dataclass(frozen=True)
class GeneratedSeries:
    """A series written to disk and the truth about it."""

    folder: Path
    paths: tuple[Path, ...]
    """Files in slice order (ascending along the slice normal), after any removal."""
    geometry: Geometry
    voxels: np.ndarray
    """Expected voxels (z, y, x) in modality units, float32, slice order as ``paths``."""
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]


def unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def rotation_direction(axis: Sequence[float], degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines of an axial plane rotated about ``axis`` by ``degrees``."""
    k = unit(axis)
    t = np.deg2rad(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    r = np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx
    return r @ np.array([1.0, 0, 0]), r @ np.array([0, 1.0, 0])


def phantom_voxels(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Integer-valued HU-like voxels with structure along every axis (so a flipped axis is detected)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    base = -1000 + 30 * z + 7 * y + 3 * x
    noise = rng.integers(-20, 20, size=shape)
    return (base + noise).astype(np.float32)


def write_series(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (8, 16, 12),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.7),
    origin: Sequence[float] = (-100.0, -120.0, 50.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    voxels: np.ndarray | None = None,
    modality: str = "CT",
    patient_id: str = "PAT001",
    patient_name: str = "Doe^Jane",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "synthetic",
    series_number: int = 1,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    instance_numbers_descending: bool = False,
    shuffle_names: bool = False,
    remove_slice: int | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    seed: int = 0,
    positions: Sequence[Sequence[float]] | None = None,
    name_prefix: str = "IM",
    first_instance: int = 1,
    edit: Callable[[int, Dataset], None] | None = None,
) -> GeneratedSeries:
    """Write a single-frame series into ``folder`` and return its truth (see module docstring).

    ``positions`` replaces the ImagePositionPatient of each slice (tilted or unevenly spaced stacks; the truth's
    geometry then keeps the first position and the nominal spacing). ``name_prefix`` and ``first_instance`` let
    several parts of one series share a folder (``IM0000.dcm``...; InstanceNumbers from ``first_instance``).
    ``edit(k, dataset)`` changes slice k's dataset before it is written (attributes that split a series).
    """
    folder.mkdir(parents=True, exist_ok=True)
    row = unit(row_direction)
    col = unit(column_direction)
    if abs(float(row @ col)) > 1e-6:
        raise ValueError("row and column directions must be orthogonal")
    normal = np.cross(row, col)
    if voxels is None:
        voxels = phantom_voxels(shape, seed)
    shape = voxels.shape
    stored = np.round((voxels - rescale_intercept) / rescale_slope)
    signed = stored.min() < 0
    stored = stored.astype(np.int16 if signed else np.uint16)
    expected = (stored.astype(np.float64) * rescale_slope + rescale_intercept).astype(np.float32)

    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    sz, sy, sx = spacing
    origin_v = np.asarray(origin, dtype=np.float64)
    now = datetime.datetime(2024, 5, 17, 10, 30)

    entries = []
    for k in range(shape[0]):
        position = np.asarray(positions[k], dtype=np.float64) if positions is not None else origin_v + k * sz * normal
        instance = first_instance - 1 + (shape[0] - k if instance_numbers_descending else k + 1)
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS_BY_MODALITY[modality]
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SOP_CLASS_BY_MODALITY[modality]
        ds.SOPInstanceUID = sop_uid
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyID = "1"
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.Modality = modality
        ds.Manufacturer = "innereye-batch tests"
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "ABDOMEN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{sz:.6f}"
        ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        else:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = "10"
            ds.RepetitionTime = "500"
            ds.EchoTrainLength = "1"
            del ds.RescaleSlope
            del ds.RescaleIntercept
        ds.PixelData = stored[k].tobytes()
        if edit is not None:
            edit(k, ds)
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, generate_instance_uid=False)
        entries.append((k, ds, sop_uid))

    if modality == "MR":  # MR images carry no rescale: voxels are the stored values
        expected = stored.astype(np.float32)

    kept = [e for e in entries if e[0] != remove_slice]
    rng = random.Random(seed)
    names = list(range(len(kept)))
    if shuffle_names:
        rng.shuffle(names)
    paths_by_k = {}
    for (k, ds, _), name in zip(kept, names, strict=True):
        path = folder / (f"{rng.getrandbits(48):012x}" if shuffle_names else f"{name_prefix}{name:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths_by_k[k] = path

    first_position = np.asarray(positions[0], dtype=np.float64) if positions is not None else origin_v
    geometry = Geometry(
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing=(float(sz), float(sy), float(sx)),
        origin=tuple(float(v) for v in first_position),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
    )
    keep_k = [k for k, _, _ in kept]
    return GeneratedSeries(
        folder=folder,
        paths=tuple(paths_by_k[k] for k in keep_k),
        geometry=geometry,
        voxels=expected[keep_k],
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        sop_instance_uids=tuple(entries[k][2] for k in keep_k),
    )


def read_with_simpleitk(paths: Sequence[Path]) -> Any:
    """The independent oracle: SimpleITK's ImageSeriesReader (GDCM) on the given files, sorted by GDCM."""
    import SimpleITK as sitk

    folder = str(Path(paths[0]).parent)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    uid = ds.SeriesInstanceUID if ds.SeriesInstanceUID in series_ids else series_ids[0]
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")


def recode_file(path: Path, transfer_syntax: UID) -> None:
    """Rewrite one file in place with another transfer syntax (compressed with pydicom, or deflated)."""
    ds = pydicom.dcmread(path)
    if transfer_syntax.is_compressed:  # keep the SOP Instance UID (pydicom would make a new one)
        ds.compress(transfer_syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)


def write_enhanced_series(
    path: Path,
    *,
    shape: tuple[int, int, int] = (6, 10, 8),
    spacing: tuple[float, float, float] = (2.0, 0.9, 0.8),
    origin: Sequence[float] = (-50.0, -60.0, 20.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    rescale_per_frame: Sequence[tuple[float, float]] | None = None,
    shuffle_frames: bool = False,
    seed: int = 0,
) -> GeneratedSeries:
    """Write one Enhanced CT multi-frame file: positions per frame, orientation and spacing shared.

    ``rescale_per_frame`` gives (slope, intercept) per slice (in slice order) in per-frame
    PixelValueTransformationSequence items; otherwise one shared transformation (1, -1024) is written.
    Frames are stored in slice order, or shuffled. The truth is returned in slice order.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    row, col = unit(row_direction), unit(column_direction)
    normal = np.cross(row, col)
    voxels = phantom_voxels(shape, seed)
    rescales = list(rescale_per_frame) if rescale_per_frame else [(1.0, -1024.0)] * shape[0]
    stored = np.stack([np.round((voxels[k] - b) / m) for k, (m, b) in enumerate(rescales)]).astype(np.int16)
    expected = np.stack([(stored[k].astype(np.float64) * m + b) for k, (m, b) in enumerate(rescales)]).astype(
        np.float32
    )
    order = list(range(shape[0]))
    if shuffle_frames:
        random.Random(seed).shuffle(order)
    sz, sy, sx = spacing
    origin_v = np.asarray(origin, dtype=np.float64)

    def item(**attributes: object) -> Dataset:
        ds = Dataset()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return ds

    sop_uid, series_uid, study_uid, for_uid = (generate_uid() for _ in range(4))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT_IMAGE_STORAGE, sop_uid
    ds.PatientName, ds.PatientID = "Doe^Jane", "PAT001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 7, 1
    ds.SeriesDescription = "enhanced"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = int(shape[1]), int(shape[2]), int(shape[0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = item(
        PixelMeasuresSequence=[item(PixelSpacing=[f"{sy:.6f}", f"{sx:.6f}"], SliceThickness=f"{sz:.6f}")],
        PlaneOrientationSequence=[item(ImageOrientationPatient=[f"{v:.8f}" for v in (*row, *col)])],
    )
    if not rescale_per_frame:
        shared.PixelValueTransformationSequence = [item(RescaleSlope="1", RescaleIntercept="-1024", RescaleType="HU")]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        groups = item(
            PlanePositionSequence=[item(ImagePositionPatient=[f"{v:.6f}" for v in origin_v + k * sz * normal])]
        )
        if rescale_per_frame:
            m, b = rescales[k]
            groups.PixelValueTransformationSequence = [
                item(RescaleSlope=f"{m:g}", RescaleIntercept=f"{b:g}", RescaleType="HU")
            ]
        frames.append(groups)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = stored[order].tobytes()
    ds.save_as(path, enforce_file_format=True)
    return GeneratedSeries(
        folder=path.parent,
        paths=(path,),
        geometry=Geometry(
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            spacing=(float(sz), float(sy), float(sx)),
            origin=tuple(float(v) for v in origin_v),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
        ),
        voxels=expected,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        frame_of_reference_uid=for_uid,
        sop_instance_uids=(sop_uid,),
    )
