"""The scan converts plain header values from their bytes itself (``file_header._plain_value``) where the file's
character set reads ASCII bytes as ASCII; every value must equal what pydicom converts, in every character set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import get_charset_files, get_testdata_files

from innereye_batch.dicom.file_header import _HEADER_TAGS, _fields, read_file_header
from innereye_batch.dicom.headers import FileHeader
from tests.factory import write_series

FILES = sorted({*get_testdata_files("*.dcm"), *get_charset_files("*.dcm")})


def _normalised(value: Any) -> list[str]:
    """A value as a list of texts, each stripped of padding (CS, LO... padding is not part of a value)."""
    values = list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return [str(v).strip(" \x00") for v in values]


@pytest.mark.parametrize("path", FILES, ids=lambda p: Path(p).name)
def test_every_header_value_read_equals_pydicoms(path: str) -> None:
    # force: files without the DICM prefix are read as the scan reads them
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
    reference = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
    for key, value in _fields(ds).items():
        if not isinstance(key, str) or key == "SpecificCharacterSet":
            continue
        try:
            expected = reference[key].value
        except Exception:  # pydicom cannot convert it: the scan keeps its text for the problem to name
            continue
        if reference[key].VR == "SQ":
            continue
        assert _normalised(value) == _normalised(expected), key


def test_a_padded_derived_image_type_is_derived_in_any_character_set(tmp_path: Path) -> None:
    """pydicom keeps 'DERIVED ' (padding inside a multi-valued CS) as it is; the scan read such a file as ORIGINAL
    when it named a character set and as DERIVED when it did not (pydicom's own 693_J2KI.dcm is one)."""
    truth = write_series(tmp_path, shape=(2, 6, 6))
    for path, charset in zip(truth.paths, ("ISO_IR 100", None), strict=True):
        ds = pydicom.dcmread(path)
        if charset:
            ds.SpecificCharacterSet = charset
        ds.ImageType = ["DERIVED ", "PRIMARY", "AXIAL"]
        ds.save_as(path, enforce_file_format=True)
    for path in truth.paths:
        header = read_file_header(path)
        assert isinstance(header, FileHeader) and header.images[0].split.derived
    real = read_file_header(Path(get_testdata_file("693_J2KI.dcm")))  # type: ignore[arg-type]
    assert isinstance(real, FileHeader) and real.images[0].split.derived
