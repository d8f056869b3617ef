"""The scan converts plain header values from their bytes itself (``header_values.plain_value``) where the file's
character set reads ASCII bytes as ASCII; every value must equal what pydicom converts, in every character set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import get_charset_files, get_testdata_files

from innereye_batch.dicom import file_header
from innereye_batch.dicom.file_header import _HEADER_TAGS, _in_memory, _read_dataset, read_file_header
from innereye_batch.dicom.header_values import header_fields
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
    for key, value in header_fields(ds).items():
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


@pytest.mark.parametrize("path", FILES, ids=lambda p: Path(p).name)
def test_the_scans_parse_is_dcmreads(path: str) -> None:
    """``_read_dataset`` calls pydicom's ``read_partial`` as ``dcmread(stop_before_pixels=True, specific_tags=...)``
    does; from a file and from its bytes in memory it reads what dcmread reads, and stops where dcmread stops."""
    expected_fp = open(path, "rb")  # noqa: SIM115 (both files stay open to compare where each parse stopped)
    expected = pydicom.dcmread(expected_fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
    with open(path, "rb") as fp, _in_memory(Path(path).read_bytes(), Path(path)) as memory:
        for source in (fp, memory):
            ds = _read_dataset(source, force=True)
            assert source.tell() == expected_fp.tell()
            assert ds == expected and ds.file_meta == expected.file_meta
            assert ds.original_encoding == expected.original_encoding
            assert ds.original_character_set == expected.original_character_set
            assert ds.filename == expected.filename
    expected_fp.close()


@pytest.mark.parametrize("path", FILES, ids=lambda p: Path(p).name)
def test_a_header_read_from_memory_is_the_header_read_from_the_file(path: str, monkeypatch: Any) -> None:
    in_memory = read_file_header(Path(path))
    monkeypatch.setattr(file_header, "_WHOLE_FILE_BYTES", -1)  # every file parsed from the file itself
    assert repr(read_file_header(Path(path))) == repr(in_memory)


def test_a_file_grown_since_its_stat_is_parsed_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert file_header._small_file(path, 100) == b"x" * 100
    assert file_header._small_file(path, 120) == b"x" * 100  # shrunk: what is there, to its end
    assert file_header._small_file(path, 99) is None  # grown: read from the file as it is now
    assert file_header._small_file(path, file_header._WHOLE_FILE_BYTES + 1) is None
