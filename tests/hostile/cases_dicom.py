"""Hostile-corpus cases of the DICOM rules of issue 14 (1: never invent geometry or drop data; 2: split what the
scanner put together; 4: every input accounted for), written with pydicom, each with its exact outcome.

All are CT, so the corpus' CT model runs every part that should run: a wrong volume would show as ``ok``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from tests.dicom.parts_factory import write_parts
from tests.dicom.split_cases import CASES
from tests.dicom.test_regrid import write_tilted, write_variable
from tests.factory import recode_file, write_series
from tests.hostile.case import Case, lenient_writing
from tests.mosaic_factory import write_siemens_mosaics

SHAPE = (6, 16, 16)
UID_ROOT = "1.2.826.0.1.3680043.10.544"


def write_case_series(root: Path, folder: str, uid: str, seed: int, **kwargs: object) -> list[Path]:
    """A small series of the corpus, written even where its values are invalid on purpose."""
    with lenient_writing():
        return list(write_series(root / folder, shape=SHAPE, series_instance_uid=uid, seed=seed, **kwargs).paths)


def _every_slice(paths: list[Path], change: object) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)  # type: ignore[operator]
        with lenient_writing():
            ds.save_as(path)


def geometry_cases(root: Path) -> list[Case]:
    """Rule 1: spacing, positions, orientation, rescale, frame of reference, MONOCHROME1."""
    rule = "1 never invent geometry"
    cases = []

    def zero_spacing(ds: Dataset) -> None:
        ds.PixelSpacing = ["0", "0"]

    uid = f"{UID_ROOT}.1"
    _every_slice(write_case_series(root, "g_zero_spacing", uid, 1), zero_spacing)
    cases.append(Case("PixelSpacing 0\\0", rule, uid, "failed", ("invalid_pixel_spacing",)))

    def no_position(ds: Dataset) -> None:
        del ds.ImagePositionPatient

    uid = f"{UID_ROOT}.2"
    _every_slice(write_case_series(root, "g_no_position", uid, 2), no_position)
    cases.append(Case("no ImagePositionPatient", rule, uid, "failed", ("no_position",)))

    def skewed(ds: Dataset) -> None:
        ds.ImageOrientationPatient = ["1", "0", "0", "0.3", "0.9539392", "0"]

    uid = f"{UID_ROOT}.3"
    _every_slice(write_case_series(root, "g_skewed", uid, 3), skewed)
    cases.append(Case("non-orthogonal ImageOrientationPatient", rule, uid, "failed", ("invalid_orientation",)))

    for index, slope in enumerate(("NaN", "0")):

        def bad_rescale(ds: Dataset, slope: str = slope) -> None:
            ds.RescaleSlope = slope

        uid = f"{UID_ROOT}.4.{index}"
        _every_slice(write_case_series(root, f"g_rescale_{index}", uid, 4 + index), bad_rescale)
        cases.append(Case(f"RescaleSlope {slope}", rule, uid, "failed", ("invalid_rescale",)))

    def no_frame_of_reference(ds: Dataset) -> None:
        del ds.FrameOfReferenceUID

    uid = f"{UID_ROOT}.5"
    _every_slice(write_case_series(root, "g_no_for", uid, 6), no_frame_of_reference)
    cases.append(Case("no FrameOfReferenceUID (DICOM-SEG needs it)", rule, uid, "failed", ("FrameOfReferenceUID",)))

    def monochrome1(ds: Dataset) -> None:
        ds.PhotometricInterpretation = "MONOCHROME1"

    uid = f"{UID_ROOT}.6"
    _every_slice(write_case_series(root, "g_monochrome1_ct", uid, 7), monochrome1)
    cases.append(Case("MONOCHROME1 CT (HU kept)", rule, uid, "ok"))
    return cases


def damage_cases(root: Path) -> list[Case]:
    """Rules 1 and 4: damaged files are problems of their series; a series nothing of which reads has a row."""
    rule = "1 never drop data"
    cases = []
    uid = f"{UID_ROOT}.10"
    paths = write_case_series(root, "d_edge_cut", uid, 10)
    paths[-1].write_bytes(paths[-1].read_bytes()[:300])  # cut inside the header of the last slice
    cases.append(Case("edge slice cut in its header", rule, uid, "failed", ("unreadable_file",)))
    uid = f"{UID_ROOT}.11"
    paths = write_case_series(root, "d_edge_empty", uid, 11)
    paths[0].write_bytes(b"")  # the first slice lost: zero bytes
    cases.append(Case("edge slice of zero bytes", rule, uid, "failed", ("unreadable_file_in_folder",)))
    uid = f"{UID_ROOT}.12"
    for path in write_case_series(root, "d_all_damaged", uid, 12):
        path.write_bytes(path.read_bytes()[:-100])  # every file's pixel data cut short
    cases.append(Case("every file damaged", "4 every input", uid, "failed", ("no_readable_images",)))

    def rgb(ds: Dataset) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.zeros((ds.Rows, ds.Columns, 3), np.uint8).tobytes()

    uid = f"{UID_ROOT}.13"
    _every_slice(write_case_series(root, "d_colour", uid, 13), rgb)
    cases.append(Case("colour-only series", "4 every input", uid, "failed", ("unsupported_images",)))
    return cases


def lying_file_cases(root: Path) -> list[Case]:
    """Files whose pixel data or identity lies, which came out ok with wrong voxels or ambiguous references (a
    fuzzing reviewer's finds): each now fails its series, naming the file and why."""
    rule = "1 never drop data"
    cases = []

    def rle_as_native(ds: Dataset) -> None:  # RLE frames (longer than the raw values) under Explicit VR LE
        noise = np.random.default_rng(int(ds.InstanceNumber)).integers(0, 4000, (ds.Rows, ds.Columns), np.int16)
        ds.PixelData = noise.tobytes()
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2 * 2] + b"\x01" * 400  # longer than raw, not padding
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    uid = f"{UID_ROOT}.70"
    _every_slice(write_case_series(root, "l_rle_as_native", uid, 70), rle_as_native)
    cases.append(Case("compressed data under a native transfer syntax", rule, uid, "failed", ("not padding",)))

    uid = f"{UID_ROOT}.71"
    for path in write_case_series(root, "l_items_in_native", uid, 71):  # Pixel Data as items, Explicit VR LE kept
        data = path.read_bytes()
        at = data.rfind(b"\xe0\x7f\x10\x00")  # the Pixel Data element: tag, VR, reserved, length; then the values
        values = data[at + 12 :]
        item = b"\xfe\xff\x00\xe0" + len(values).to_bytes(4, "little")
        undefined = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
        empty_table = b"\xfe\xff\x00\xe0" + bytes(4)
        path.write_bytes(data[:at] + undefined + empty_table + item + values + b"\xfe\xff\xdd\xe0" + bytes(4))
    cases.append(Case("encapsulated items under a native transfer syntax", rule, uid, "failed", ("undefined length",)))

    uid = f"{UID_ROOT}.72"
    paths = write_case_series(root, "l_jpegls_cut", uid, 72)
    for path in paths:
        recode_file(path, JPEGLSLossless)
    ds = pydicom.dcmread(paths[-1])
    stream = next(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([stream[: len(stream) * 6 // 10 // 2 * 2]])  # the codestream cut, framing whole
    ds.save_as(paths[-1])
    cases.append(Case("edge slice's JPEG-LS codestream cut", rule, uid, "failed", ("end-of-image marker",)))

    uid = f"{UID_ROOT}.73"
    paths = write_case_series(root, "l_edge_zero_filled", uid, 73)
    paths[-1].write_bytes(bytes(paths[-1].stat().st_size))  # allocated, never written: a crash while copying
    cases.append(Case("edge slice of NUL bytes", rule, uid, "failed", ("only NUL bytes",)))

    uid = f"{UID_ROOT}.74"
    paths = write_case_series(root, "l_edge_preamble", uid, 74)
    paths[0].write_bytes(paths[0].read_bytes()[:131])  # cut inside the DICM prefix
    cases.append(Case("edge slice cut inside its DICM prefix", rule, uid, "failed", ("'DICM' prefix",)))

    uid = f"{UID_ROOT}.75"
    paths = write_case_series(root, "l_shared_instance", uid, 75)
    shared = pydicom.dcmread(paths[4])
    shared.SOPInstanceUID = pydicom.dcmread(paths[3]).SOPInstanceUID
    shared.save_as(paths[4])
    cases.append(Case("two slices with one SOPInstanceUID", rule, uid, "failed", ("duplicate_instances",)))
    return cases


def absurd_value_cases(root: Path) -> list[Case]:
    """Finite values no scanner writes, which crashed the scan or the run (overflows), or failed late."""
    rule = "1 never invent geometry"
    cases = []

    def far_away(ds: Dataset) -> None:
        ds.ImagePositionPatient = ["0", "0", "1.7e308" if int(ds.InstanceNumber) % 2 else "-1.7e308"]

    uid = f"{UID_ROOT}.80"
    _every_slice(write_case_series(root, "v_far_positions", uid, 80), far_away)
    cases.append(Case("ImagePositionPatient +-1.7e308", rule, uid, "failed", ("from the origin",)))

    def huge_spacing(ds: Dataset) -> None:
        ds.PixelSpacing = ["1e300", "1e300"]

    uid = f"{UID_ROOT}.81"
    _every_slice(write_case_series(root, "v_huge_spacing", uid, 81), huge_spacing)
    cases.append(Case("PixelSpacing 1e300", rule, uid, "failed", ("invalid_pixel_spacing",)))

    def negative_rows(ds: Dataset) -> None:
        ds["Rows"].VR = "SS"
        ds.Rows = -16

    uid = f"{UID_ROOT}.82"
    _every_slice(write_case_series(root, "v_negative_rows", uid, 82), negative_rows)
    cases.append(Case("Rows -16", rule, uid, "failed", ("not a positive whole number",)))
    return cases


def split_cases(root: Path) -> list[Case]:
    """Rule 2: parts that share a SeriesInstanceUID run separately; irregular slices are refused with the reason."""
    rule = "2 split what the scanner put together"
    cases = []
    for name in ("echo", "magphase", "temporal", "dti"):
        parts, keys = CASES[name]
        with lenient_writing():
            written = write_parts(root / f"s_{name}", parts, modality="CT", shape=(5, 12, 12))
        uid = written[0].series_instance_uid
        cases += [Case(f"{name} part {key}", rule, uid, "ok", key=uid + key) for key in keys]
    uid = f"{UID_ROOT}.20"
    write_case_series(root, "s_missing_slice", uid, 20, remove_slice=3)
    cases.append(Case("a slice missing", rule, uid, "failed", ("missing_slices",)))
    write_variable(root / "s_variable")
    uid = str(pydicom.dcmread(next((root / "s_variable").iterdir())).SeriesInstanceUID)
    cases.append(Case("variable spacing by design", rule, uid, "failed", ("variable_spacing",)))
    write_tilted(root / "s_tilted")
    uid = str(pydicom.dcmread(next((root / "s_tilted").iterdir())).SeriesInstanceUID)
    cases.append(Case("gantry tilt", rule, uid, "failed", ("gantry_tilt", "degrees")))
    return cases


def collision_cases(root: Path) -> list[Case]:
    """Rule 1: a slice of another study carrying the same SeriesInstanceUID is split off, never merged."""
    uid = f"{UID_ROOT}.30"
    write_case_series(root, "c_main", uid, 30)
    with lenient_writing():
        write_series(root / "c_intruder", shape=(1, 16, 16), series_instance_uid=uid, seed=31, patient_id="OTHER")
    return [
        Case("series with an intruder slice", "1 never merge", uid, "ok", key=uid),
        Case("the intruder, split off", "1 never merge", uid, "ok", key_prefix=uid + "."),
    ]


def mosaic_cases(root: Path) -> list[Case]:
    """Rules 1 and 2: a Siemens mosaic series (one file per volume) runs volume by volume; a mosaic that cannot be
    unpacked fails, never read as one 2-D slice. Written as CT so that the corpus' CT model runs them."""
    uid = f"{UID_ROOT}.40"
    write_siemens_mosaics(root / "m_mosaic", volumes=2, slices=6, tile=(16, 16), modality="CT", series_instance_uid=uid)
    rule = "2 split what the scanner put together"
    # Unpacked and split (tests/pipeline/test_mosaic_run.py runs them ok with the other outputs); by default the
    # run also asks for an RT Structure Set, whose contours cannot reference a mosaic's tiles: refused, said why.
    refused = ("output rtstruct", "mosaic")
    cases = [Case(f"mosaic volume {n} of 2", rule, uid, "failed", refused, key=f"{uid}.acq{n}") for n in (1, 2)]
    uid = f"{UID_ROOT}.41"
    write_siemens_mosaics(
        root / "m_no_count",
        slices=6,
        tile=(16, 16),
        modality="CT",
        series_instance_uid=uid,
        csa_count=None,
        tag_count=None,
    )
    reason = ("mosaic", "ImageType MOSAIC without NumberOfImagesInMosaic")
    return [*cases, Case("mosaic without a slice count", "1 never invent geometry", uid, "failed", reason)]
