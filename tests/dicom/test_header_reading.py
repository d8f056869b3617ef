"""Headers read by pydicom: unusual encodings scan and load, and damaged pixel data elements are caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from tests.dicom.oracle import assert_matches_truth_and_simpleitk, only_series
from tests.factory import write_series


def pixel_value_offset(path: Path) -> int:
    """Where the pixel data value starts in the file (pydicom's own account, value not loaded)."""
    element = pydicom.dcmread(path, defer_size=0).get_item("PixelData", keep_deferred=True)
    return int(element.value_tell)


def test_nested_undefined_length_sequences_before_pixel_data(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8))
    for path in truth.paths:
        ds = pydicom.dcmread(path)
        inner = Dataset()
        inner.ReferencedSOPInstanceUID = "1.2.3"
        outer = Dataset()
        outer.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        outer.ReferencedImageSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([outer])
        ds["ReferencedImageSequence"].is_undefined_length = True
        outer["ReferencedImageSequence"].is_undefined_length = True
        ds.save_as(path, enforce_file_format=True)
    assert_matches_truth_and_simpleitk(only_series(tmp_path), truth)


def test_file_without_preamble_or_file_meta_scans_and_loads(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 10, 8), shuffle_names=True)
    for path in truth.paths:
        ds = pydicom.dcmread(path)
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        ds.save_as(path, implicit_vr=True, little_endian=True)
        assert path.read_bytes()[128:132] != b"DICM"
    series = only_series(tmp_path)
    assert series.transfer_syntaxes == (pydicom.uid.ImplicitVRLittleEndian,)
    assert series.geometry.is_close(truth.geometry)
    assert series.files == truth.paths
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)


@pytest.mark.parametrize(
    ("charset", "description"), [("ISO_IR 100", "Tête Übersicht"), ("ISO_IR 144", "Голова"), ("ISO_IR 192", "頭部")]
)
def test_series_description_is_decoded_with_the_file_character_set(
    tmp_path: Path, charset: str, description: str
) -> None:
    truth = write_series(tmp_path, shape=(2, 6, 6))
    for path in truth.paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.SeriesDescription = description
        ds.save_as(path, enforce_file_format=True)
    assert description.encode("utf-8") not in truth.paths[0].read_bytes() or charset == "ISO_IR 192"
    assert only_series(tmp_path).series_description == description


def test_pixel_data_shorter_than_the_header_announces(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 10, 8))
    victim = truth.paths[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:60]
    ds.save_as(victim, enforce_file_format=True)
    result = scan_tree(tmp_path)
    assert [(s.path, s.reason) for s in result.skipped] == [
        (victim, "pixel data too short: 60 bytes for 160 expected from the header")
    ]
    (series,) = result.series  # the damaged slice is a fatal problem, and the gap it leaves shows
    assert {p.kind for p in series.fatal_problems} == {"unreadable_file", "missing_slices"}


def test_file_cut_inside_the_pixel_data_element_header(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8))
    victim = truth.paths[0]
    element_start = pixel_value_offset(victim) - 12  # explicit VR OW: tag, VR, reserved, 4-byte length
    victim.write_bytes(victim.read_bytes()[: element_start + 10])  # half of the length is missing
    (skipped,) = scan_tree(tmp_path).skipped
    assert skipped.path == victim
    assert skipped.reason == "truncated file: ends inside a data element header"


def test_compressed_pixel_data_without_sequence_delimiter(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8), transfer_syntax=pydicom.uid.RLELossless)
    victim = truth.paths[2]
    data = victim.read_bytes()
    assert data[-8:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # the sequence delimiter ends the file
    victim.write_bytes(data[:-8])
    (skipped,) = scan_tree(tmp_path).skipped
    assert skipped.reason.startswith("truncated file: compressed pixel data has no end")


def test_compressed_pixel_data_with_a_corrupt_item_tag(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8), transfer_syntax=pydicom.uid.RLELossless)
    victim = truth.paths[1]
    data = bytearray(victim.read_bytes())
    start = pixel_value_offset(victim)
    first_fragment = data.index(b"\xfe\xff\x00\xe0", start + 8)  # after the basic offset table item
    data[first_fragment : first_fragment + 4] = b"\x08\x00\x16\x00"
    victim.write_bytes(bytes(data))
    (skipped,) = scan_tree(tmp_path).skipped
    assert skipped.path == victim
    assert skipped.reason.startswith("corrupt compressed pixel data")
