"""A hostile input folder, built with pydicom: each case is one observed way a hospital folder or a flaky
environment broke the tool, with the exact outcome a correct run must give.

``build_corpus(root)`` writes every case under ``root`` and returns the cases; ``GOOD`` is an ordinary series
that must still be ``ok`` in the same run. Cases are keyed by the SeriesInstanceUID their row carries in the
summary (as stored there: printable text).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, RLELossless, generate_uid

from innereye_batch.text import printable
from tests.factory import write_series
from tests.hostile.case import Case
from tests.hostile.cases_dicom import (
    SHAPE,
    absurd_value_cases,
    collision_cases,
    damage_cases,
    geometry_cases,
    lying_file_cases,
    mosaic_cases,
    split_cases,
    write_case_series,
)

PATIENT_NAMES = ("Smith", "Doe^Jane")
"""Names written into the corpus: none may appear in anything the run prints or writes besides DICOM outputs."""
UID_ROOT = "1.2.826.0.1.3680043.10.543"


def _rle_bomb(root: Path) -> str:
    """A 4 KB RLE file whose header claims 65535 x 65535 pixels: decoding would allocate 16 GiB."""
    uid = f"{UID_ROOT}.90"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), uid, generate_uid()
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows = ds.Columns = 65535
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (64 + 1800).to_bytes(4, "little")
    segment = bytes([0x81, 0]) * 900  # runs of zeros
    ds.PixelData = encapsulate([header + bytes(52) + segment + segment])
    (root / "bomb").mkdir()
    ds.save_as(root / "bomb" / "bomb.dcm", enforce_file_format=True)
    return uid


def _deep(root: Path, levels: int) -> Path:
    """A chain of ``levels`` nested folders (made one by one: pathlib's mkdir(parents=True) recurses)."""
    folder = root / "deep"
    folder.mkdir()
    for _ in range(levels):
        folder = folder / "d"
        os.mkdir(folder)
    return folder.relative_to(root)


def remove_deep_tree(root: Path) -> None:
    """Remove the nested folders of ``_deep`` bottom up (shutil.rmtree, and so pytest's clean-up, recurses)."""
    folder = root / "deep"
    chain = []
    while folder.is_dir():
        chain.append(folder)
        folder = folder / "d"
    for link in reversed(chain):
        for entry in link.iterdir():
            if not entry.is_dir():
                entry.unlink()
        link.rmdir()


Builder = Callable[[Path], list[Case]]


def _text_cases(root: Path) -> list[Case]:
    """Rule 5: text from files is data, never markup or code."""
    rule = "5 text is data"
    cases = []
    uid = f"{UID_ROOT}.1.[/red]"
    write_case_series(root, "markup_uid", uid, 1)
    cases.append(Case("markup in a SeriesInstanceUID", rule, uid, "ok"))
    uid = f"{UID_ROOT}.2"
    write_case_series(root, "markup_description", uid, 2, series_description="AXIAL [/w contrast]")
    cases.append(Case("markup in a SeriesDescription", rule, uid, "ok"))
    uid = f"{UID_ROOT}.3"
    write_case_series(root, "[/old]", uid, 3)
    cases.append(Case("markup in a folder name", rule, uid, "ok"))
    uid = '=HYPERLINK("http://x.invalid","a")'
    write_case_series(root, "formula_uid", uid, 4)
    cases.append(Case("a UID that is a spreadsheet formula", rule, uid, "ok"))
    uid = f"{UID_ROOT}.5\x1b[2J\x00.9"
    write_case_series(root, "control_uid", uid, 5)
    cases.append(Case("terminal control and NUL bytes in a UID", rule, printable(uid), "ok"))
    uid = f"{UID_ROOT}.6"
    paths = write_case_series(root, "non_utf8", uid, 6)
    broken = paths[2].with_name(os.fsdecode(b"slice\xff\xfe.dcm"))
    paths[2].rename(broken)
    broken.write_bytes(broken.read_bytes()[:-200])  # pixel data cut: the series fails, its reason names the file
    cases.append(Case("a non-UTF-8 file name in a failure reason", rule, uid, "failed", ("slice\\xff\\xfe.dcm",)))
    return cases


def _folder_cases(root: Path) -> list[Case]:
    """Rule 6: distinct series, distinct folders."""
    rule = "6 distinct folders"
    pairs = [
        (f"{UID_ROOT}.7/4", f"{UID_ROOT}.7_4"),
        ("..", "..."),
        (f"{UID_ROOT}.8." + "1" * 170 + "1", f"{UID_ROOT}.8." + "1" * 170 + "2"),
    ]
    cases = []
    for index, pair in enumerate(pairs):
        for side, uid in enumerate(pair):
            write_case_series(root, f"collide_{index}_{side}", uid, 10 + 2 * index + side)
            cases.append(Case(f"folder-name collision {index} ({side})", rule, uid, "ok"))
    return cases


def _identity_cases(root: Path) -> list[Case]:
    """Rule 7: no patient identity outside DICOM outputs (highdicom quotes a PatientName without a caret)."""
    uid = f"{UID_ROOT}.20"
    write_case_series(root, "single_component_name", uid, 20, patient_name=PATIENT_NAMES[0], patient_id="MRN-SMITH-1")
    return [Case("a PatientName highdicom warns about", "7 no identity", uid, "ok")]


def _memory_cases(root: Path) -> list[Case]:
    """Rule 3: bounded memory for any file."""
    uid = _rle_bomb(root)
    return [Case("4 KB RLE file claiming 65535 x 65535", "3 bounded memory", uid, "failed", ("--max-voxels",))]


def _tree_cases(root: Path) -> list[Case]:
    """Rule 8: a 1,100-level folder tree."""
    uid = f"{UID_ROOT}.30"
    write_case_series(root, str(_deep(root, 1100)), uid, 30)
    return [Case("a series 1,100 folders deep", "8 leftovers and trees", uid, "ok")]


BUILDERS: tuple[Builder, ...] = (
    _text_cases,
    _folder_cases,
    _identity_cases,
    _memory_cases,
    _tree_cases,
    geometry_cases,
    lying_file_cases,
    absurd_value_cases,
    damage_cases,
    split_cases,
    collision_cases,
    mosaic_cases,
)


def build_corpus(root: Path) -> tuple[list[Case], str]:
    """Write every case under ``root``; returns the cases and the UID of the good series that must stay ok."""
    cases = [case for builder in BUILDERS for case in builder(root)]
    good = write_series(root / "good", shape=SHAPE, seed=99, patient_name=PATIENT_NAMES[1]).series_instance_uid
    names = [(c.series_instance_uid, c.key, c.key_prefix) for c in cases]
    assert len(set(names)) == len(names), "every case needs its own row"
    return cases, good


def read_summary_rows(out: Path) -> list[dict[str, Any]]:
    """summary.json's series records."""
    import json

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return list(summary["series"])


def dataset_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
