"""Files that claim to be images of a series but cannot be used: find their series, and make it say so.

A cut or corrupt file is never just dropped (a series that silently lost an edge slice has the wrong origin and
extent). Each such file is a fatal problem:
- of its own series, where its SeriesInstanceUID can be read, if need be from what pydicom can read of a cut
  header (``salvage_series_uid``);
- otherwise of every series that has images in the same folder ("it may be one of its slices"), since nothing
  says which one it belonged to.
A file that is not DICOM (no 'DICM' prefix and no DICOM tags at its start), an empty hidden file (``.gitkeep``),
or a readable object that is not an image (RT plan, structured report, DICOMDIR) claims nothing: it is only
listed as skipped. Every damaged file is listed as skipped too.

Unreadable files of unknown series in a folder of no series become a row of their own
(``unreadable.<hash of the folder>``, failed): a folder of cut files is never dropped with exit code 0.

Images that are readable but cannot be processed (colour, 1-bit) are left out of their series, which says so.
A SeriesInstanceUID that every file claiming it fails (all damaged, or all colour) still becomes a series: a
placeholder without images, with the fatal problem, so that every series found has its row in the summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.tag import Tag
from pydicom.uid import UID

from innereye_batch.dicom.geometry import Geometry
from innereye_batch.dicom.problems import (
    NO_READABLE_IMAGES,
    UNREADABLE_FILE,
    UNREADABLE_FILE_IN_FOLDER,
    UNSUPPORTED_IMAGES,
)
from innereye_batch.dicom.series import Problem, SeriesInfo, SkippedFile

SALVAGE_BYTES = 1 << 20
"""How much of a damaged file is read to salvage its SeriesInstanceUID (headers are far smaller)."""
_SALVAGE_TAGS = [Tag("SOPClassUID"), Tag("SeriesInstanceUID"), Tag("StudyInstanceUID"), Tag("Modality")]
_IMAGE_CLASSES_NOT_NAMED_SO = frozenset({"1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.30"})
"""RT Dose Storage and Parametric Map Storage: images whose SOP class name does not say 'Image Storage'."""
_NAMES_SHOWN = 3


@dataclass(frozen=True)
class Damaged:
    """A file that claims to be an image and cannot be used, and the series it names (None: unknown)."""

    skipped: SkippedFile
    series_instance_uid: str | None
    study_instance_uid: str = ""
    modality: str = ""
    unsupported: bool = False
    """Readable, but of a kind this tool does not process (colour, 1-bit), rather than damaged."""
    instance_number: int | None = None
    """Of an unsupported image: the InstanceNumber it holds in its series (no gap of a stack, ``numbering_gaps``)."""
    empty: bool = False
    """0 bytes (or only NUL bytes, or a preamble and no more): a lost slice beside images of its folder, but alone
    in a folder no sign of anything."""


_NEVER_PIXELS = ("1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.4.2")
"""Raw Data Storage and MR Spectroscopy Storage: classes whose IOD holds no pixel data, though scanners copy the
image's Rows and Columns into them (Philips' raw data files beside its enhanced MR images)."""
_NEVER_PIXELS_FAMILIES = tuple(f"1.2.840.10008.5.1.4.1.1.{family}." for family in ("9", "11", "88", "104"))
"""Waveforms, presentation states, structured reports and encapsulated documents."""


def is_image_claim(sop_class: str, fields: Mapping[Any, Any]) -> bool:
    """True unless the file is known not to be an image: a SOP class that never holds pixel data, or a known
    non-image SOP class without image dimensions."""
    if sop_class in _NEVER_PIXELS or sop_class.startswith(_NEVER_PIXELS_FAMILIES):
        return False
    if fields.get("Rows") or fields.get("Columns"):
        return True
    if not sop_class:
        return True  # nothing says what it is: it may be a slice
    name = UID(sop_class).name
    if name == sop_class:  # a SOP class pydicom does not know (private): it may be an image
        return True
    return "Image Storage" in name or sop_class in _IMAGE_CLASSES_NOT_NAMED_SO


def salvage(path: Path, reason: str) -> Damaged:
    """A damaged file, with the series, study and modality it names as far as what is left of it says."""
    series_uid, study_uid, modality = salvage_identity(path)
    return Damaged(SkippedFile(path, reason), series_uid, study_uid, modality)


def salvage_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID among the elements pydicom can read before a file's damage, if it is there."""
    return salvage_identity(path)[0]


def salvage_identity(path: Path) -> tuple[str | None, str, str]:
    """SeriesInstanceUID (None when not there), StudyInstanceUID and Modality among the elements pydicom can read
    before a file's damage.

    pydicom stops quietly where a header is cut between elements; where the cut falls inside an element's
    header (its tag, VR or length), it fails, so the file's end is cut back a byte at a time (at most an
    element header's 12 bytes) until pydicom reads what lies before the damage.
    """
    try:
        with open(path, "rb") as fp:
            data = fp.read(SALVAGE_BYTES)
    except OSError:
        return None, "", ""
    bare = data[128:132] != b"DICM"
    for cut in range(len(data), max(len(data) - 13, 0), -1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data[:cut]), force=bare, specific_tags=_SALVAGE_TAGS)
            uid = ds.get("SeriesInstanceUID")
        except Exception:
            continue
        return (str(uid) if uid else None), str(ds.get("StudyInstanceUID") or ""), str(ds.get("Modality") or "")
    return None, "", ""


def attach_damage(series: list[SeriesInfo], damaged: list[Damaged]) -> list[SeriesInfo]:
    """``series`` with a fatal problem for each damaged file that is, or may be, one of theirs."""
    members: dict[str, list[SkippedFile]] = defaultdict(list)
    unsupported: dict[str, list[SkippedFile]] = defaultdict(list)
    orphans: dict[Path, list[SkippedFile]] = defaultdict(list)
    for file in damaged:
        if file.series_instance_uid and file.unsupported:
            unsupported[file.series_instance_uid].append(file.skipped)
        elif file.series_instance_uid:
            members[file.series_instance_uid].append(file.skipped)
        else:
            orphans[file.skipped.path.parent].append(file.skipped)
    result = []
    for info in series:
        problems = list(info.problems)
        own = members.get(info.series_instance_uid, [])
        if own:
            problems.append(
                Problem(UNREADABLE_FILE, f"{len(own)} file(s) of this series cannot be read: {_names(own)}", True)
            )
        left_out = unsupported.get(info.series_instance_uid, [])
        if left_out:
            problems.append(
                Problem(UNSUPPORTED_IMAGES, f"{len(left_out)} image(s) with this UID left out: {_names(left_out)}")
            )
        folders = {path.parent for path in info.files} if orphans else set()  # no orphans: no folder to look in
        nearby = [orphan for folder in sorted(folders) for orphan in orphans.get(folder, [])]
        for orphan in nearby[:_NAMES_SHOWN]:
            problems.append(
                Problem(
                    UNREADABLE_FILE_IN_FOLDER,
                    f"file {orphan.path.name} in this series' folder cannot be read ({orphan.reason}): "
                    "it may be one of its slices",
                    True,
                )
            )
        if len(nearby) > _NAMES_SHOWN:
            problems.append(
                Problem(
                    UNREADABLE_FILE_IN_FOLDER,
                    f"{len(nearby) - _NAMES_SHOWN} more unreadable file(s) in its folder",
                    True,
                )
            )
        result.append(dataclasses.replace(info, problems=tuple(problems)) if problems != list(info.problems) else info)
    found = {info.series_instance_uid for info in series}
    for uid in sorted((set(members) | set(unsupported)) - found):
        result.append(_placeholder(uid, [f for f in damaged if f.series_instance_uid == uid]))
    claimed = {path.parent for info in series for path in info.files}
    empty = {file.skipped.path for file in damaged if file.empty}
    for folder, files in sorted(orphans.items()):
        unclaimed = [file for file in files if folder not in claimed and file.path not in empty]
        if unclaimed:  # DICOM files of no series found, none of them readable: a row of their own, never dropped
            result.append(_orphans_row(folder, unclaimed))
    return result


def _orphans_row(folder: Path, files: list[SkippedFile]) -> SeriesInfo:
    """A placeholder for unreadable DICOM files whose series cannot be told, in a folder without any series:
    ``unreadable.<hash of the folder>``, failed with the reason, so that a run that lost them is not ``ok``."""
    digest = hashlib.sha256(str(folder).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    reason = f"{len(files)} DICOM file(s) whose series cannot be read, in a folder of no other series: {_names(files)}"
    return _imageless("", "", "", [Problem(NO_READABLE_IMAGES, reason, True)], key_suffix=f"unreadable.{digest}")


_NO_GEOMETRY = Geometry((0, 0, 0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _placeholder(uid: str, files: list[Damaged]) -> SeriesInfo:
    """A series none of whose files can be used: no images, the fatal reason, its row in every report."""
    broken = [f.skipped for f in files if not f.unsupported]
    left_out = [f.skipped for f in files if f.unsupported]
    problems = []
    if broken:
        problems.append(
            Problem(NO_READABLE_IMAGES, f"none of its {len(broken)} file(s) can be read: {_names(broken)}", True)
        )
    if left_out:
        problems.append(
            Problem(UNSUPPORTED_IMAGES, f"{len(left_out)} image(s), none usable: {_names(left_out)}", not broken)
        )
    study = next((f.study_instance_uid for f in files if f.study_instance_uid), "")
    modality = next((f.modality for f in files if f.modality), "")
    return _imageless(uid, study, modality, problems)


def _imageless(uid: str, study: str, modality: str, problems: list[Problem], key_suffix: str = "") -> SeriesInfo:
    """A row for files none of which can be used: no images, no geometry, its fatal problems."""
    return SeriesInfo(
        series_instance_uid=uid,
        study_instance_uid=study,
        frame_of_reference_uid="",
        modality=modality,
        sop_class_uid="",
        series_description="",
        slices=(),
        geometry=_NO_GEOMETRY,
        transfer_syntaxes=(),
        problems=tuple(problems),
        key_suffix=key_suffix,
    )


def _names(files: list[SkippedFile]) -> str:
    shown = "; ".join(f"{f.path.name} ({f.reason})" for f in files[:_NAMES_SHOWN])
    return shown + (f"; and {len(files) - _NAMES_SHOWN} more" if len(files) > _NAMES_SHOWN else "")
