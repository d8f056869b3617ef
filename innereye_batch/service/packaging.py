"""Result zips of a finished job: InnerEye's (one file, ``segmentation.dcm``) or every output of `run`.

InnerEye's result is exactly one file, ``segmentation.dcm``, and it IS an RT Structure Set: the rtstruct writer's
``rtstruct.dcm`` of the job's one series (already read back and checked against the label map when it was
written), with SoftwareVersions set to the model id as InnerEye sets it; nothing else in it is changed.
``?format=all`` gives the job's output folder as `run` leaves it: one folder per series (NIfTI, DICOM-SEG as
``segmentation.dcm``, ``rtstruct.dcm``, ``preview.png``, ``predictions.json``, ``done.json``) or per image,
and ``summary.json``, ``summary.csv``, ``report.html``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from innereye_batch.files import TEMP_PREFIX

INNEREYE_RESULT_NAME = "segmentation.dcm"
_LO_MAX = 64


def innereye_zip(output_dir: Path, model_id: str) -> bytes:
    """The zip InnerEye's API returns: ``segmentation.dcm``, the job's RT Structure Set. FileNotFoundError
    when the job has no structure set (more or less than one)."""
    import pydicom

    found = sorted(output_dir.glob("*/rtstruct.dcm"))
    if len(found) != 1:
        raise FileNotFoundError(f"{len(found)} RT Structure Sets in the job's outputs, not one")
    dataset = pydicom.dcmread(found[0])
    dataset.SoftwareVersions = model_id[:_LO_MAX]
    encoded = io.BytesIO()
    dataset.save_as(encoded, enforce_file_format=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(INNEREYE_RESULT_NAME, encoded.getvalue())
    return buffer.getvalue()


def all_outputs_zip(output_dir: Path) -> bytes:
    """Every file of the job's output folder, paths relative to it (temporary files left out)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(output_dir.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.startswith((TEMP_PREFIX, ".")):
                archive.write(path, path.relative_to(output_dir).as_posix())
    return buffer.getvalue()
