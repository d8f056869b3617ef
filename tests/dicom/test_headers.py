"""The fast header reader agrees with pydicom on every field and on where the pixel data starts."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from innereye_batch.dicom import headers
from tests.factory import write_series

REAL = Path(pydicom.data.__file__).parent / "test_files"
COMPARED = ["SOPInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns", "BitsAllocated", "SeriesNumber"]


def fast_and_pydicom(path: Path) -> tuple[headers.RawHeader, headers.RawHeader]:
    size = path.stat().st_size
    with open(path, "rb") as fp:
        fast = headers._parse_fast(fp.read(65536), size)
        slow = headers._parse_with_pydicom(fp, size, force=False)
    return fast, slow


def assert_same(fast: headers.RawHeader, slow: headers.RawHeader) -> None:
    assert fast.pixel_offset == slow.pixel_offset
    assert fast.transfer_syntax == slow.transfer_syntax
    for keyword in COMPARED:
        assert str(fast.get(keyword)) == str(slow.get(keyword)), keyword
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        fast_values = fast.get(keyword)
        slow_values = slow.get(keyword)
        assert (fast_values is None) == (slow_values is None)
        if fast_values is not None:
            assert [float(v) for v in fast_values] == pytest.approx([float(v) for v in slow_values])


def test_generated_file_with_undefined_length_sequences(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(1, 8, 8))
    ds = pydicom.dcmread(truth.paths[0])
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3"
    outer = Dataset()
    outer.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    outer.ReferencedImageSequence = Sequence([inner])  # nested, to exercise the recursive skip
    ds.ReferencedImageSequence = Sequence([outer])
    ds["ReferencedImageSequence"].is_undefined_length = True
    outer["ReferencedImageSequence"].is_undefined_length = True
    ds.save_as(truth.paths[0], enforce_file_format=True)
    fast, slow = fast_and_pydicom(truth.paths[0])
    assert isinstance(fast.fields["Rows"], int)  # decoded by the fast parser, not by pydicom
    assert_same(fast, slow)


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "dicomdirtests/77654033/CR1/6154"],
)
def test_real_files(name: str) -> None:
    assert_same(*fast_and_pydicom(REAL / name))


def test_files_the_fast_parser_leaves_to_pydicom_still_read() -> None:
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        path = REAL / name
        with open(path, "rb") as fp:
            header = headers.read_header(fp, path.stat().st_size)
        assert header.get("Rows") and header.pixel_offset is not None
