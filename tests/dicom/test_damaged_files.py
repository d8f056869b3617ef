"""Rule 1 item 2 of issue 14: a file that claims a series and cannot be read is a fatal problem of that series,
never silently dropped (a lost edge slice moves the origin without leaving a gap)."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.series import SeriesInfo
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series
from tests.factory import recode_file, write_enhanced_series, write_series


def kinds(series: SeriesInfo) -> dict[str, bool]:
    return {p.kind: p.fatal for p in series.problems}


def element_offset(path: Path, keyword: str) -> int:
    """Where an element's tag starts in an explicit VR little endian file (after the file meta)."""
    group, element = divmod(int(pydicom.tag.Tag(keyword)), 0x10000)
    data = path.read_bytes()
    return data.index(struct.pack("<HH", group, element), 132 + 12)


@pytest.mark.parametrize(
    "cut",
    ["after_series_uid", "inside_rows_value", "inside_pixel_header", "before_series_uid", "inside_meta", "empty"],
)
def test_edge_slice_cut_anywhere_is_fatal_for_its_series(tmp_path: Path, cut: str) -> None:
    truth = write_series(tmp_path, shape=(16, 8, 8))
    edge = truth.paths[-1]  # the top slice: losing it leaves no gap
    data = edge.read_bytes()
    cuts = {
        "after_series_uid": element_offset(edge, "StudyID"),
        "inside_rows_value": element_offset(edge, "Rows") + 9,
        "inside_pixel_header": element_offset(edge, "PixelData") + 10,
        "before_series_uid": element_offset(edge, "StudyInstanceUID") + 20,
        "inside_meta": 150,
        "empty": 0,
    }
    edge.write_bytes(data[: cuts[cut]])
    result = scan_tree(tmp_path)
    (series,) = result.series
    assert [s.path for s in result.skipped] == [edge]  # still listed as skipped, with its reason
    assert len(series.slices) == 15
    if cut in ("after_series_uid", "inside_rows_value", "inside_pixel_header"):
        assert kinds(series) == {"unreadable_file": True}  # its SeriesInstanceUID was read before the cut
        assert f"{edge.name} (truncated file" in series.problems[0].message or (
            f"{edge.name} (no pixel data (CT Image Storage): the image ends before its pixel data)"
            in series.problems[0].message  # cut exactly between two elements
        )
    else:  # the cut came before the SeriesInstanceUID: every series of the folder may have lost it
        assert kinds(series) == {"unreadable_file_in_folder": True}
        assert series.problems[0].message.startswith(f"file {edge.name} in this series' folder cannot be read (")
        assert series.problems[0].message.endswith("it may be one of its slices")
    with pytest.raises(SeriesError, match=edge.name):
        load_volume(series)


def test_unreadable_file_of_unknown_series_fails_every_series_of_its_folder_only(tmp_path: Path) -> None:
    a = write_series(tmp_path / "shared", name_prefix="A", seed=1)
    b = write_series(tmp_path / "shared", name_prefix="B", seed=2)
    elsewhere = write_series(tmp_path / "other", seed=3)
    (tmp_path / "shared" / "broken.dcm").write_bytes(a.paths[0].read_bytes()[:140])  # DICM prefix, then nothing
    by_uid = {s.series_instance_uid: s for s in scan_tree(tmp_path).series}
    for truth in (a, b):
        assert kinds(by_uid[truth.series_instance_uid]) == {"unreadable_file_in_folder": True}
    assert by_uid[elsewhere.series_instance_uid].problems == ()


def test_text_and_hidden_empty_files_claim_nothing(tmp_path: Path) -> None:
    truth = write_series(tmp_path)
    (tmp_path / "notes.txt").write_text("scanned on Tuesday\n")
    (tmp_path / ".gitkeep").write_bytes(b"")
    (tmp_path / "DICOMDIR").write_bytes(
        (Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "DICOMDIR").read_bytes()
    )
    result = scan_tree(tmp_path)
    assert only_series(tmp_path).problems == ()
    assert {s.path.name for s in result.skipped} == {"notes.txt", ".gitkeep", "DICOMDIR"}
    assert len(result.series[0].slices) == len(truth.paths)


def test_image_without_pixel_data_is_a_damaged_member(tmp_path: Path) -> None:
    truth = write_series(tmp_path)
    ds = pydicom.dcmread(truth.paths[0])
    del ds.PixelData
    ds.save_as(truth.paths[0], enforce_file_format=True)
    series = only_series(tmp_path)  # InstanceNumbers 2-8 remain: the second line of defence speaks too
    assert kinds(series) == {"unreadable_file": True, "possibly_incomplete": False}
    assert "no pixel data (CT Image Storage)" in str(series.problems)


def _without_pixels(sop_class: str, **elements: object) -> Dataset:
    """A dataset of ``sop_class`` holding ``elements`` and no pixel data, with file meta, ready to save."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, pydicom.uid.generate_uid()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def test_report_without_pixel_data_in_the_folder_claims_nothing(tmp_path: Path) -> None:
    write_series(tmp_path)
    report = _without_pixels(
        pydicom.uid.BasicTextSRStorage, SeriesInstanceUID=pydicom.uid.generate_uid(), Modality="SR"
    )
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    result = scan_tree(tmp_path)
    assert result.series[0].problems == ()
    assert [s.reason for s in result.skipped] == ["no pixel data (Basic Text SR Storage)"]


def test_raw_data_of_the_series_with_the_images_rows_claims_nothing(tmp_path: Path) -> None:
    """Philips writes a Raw Data Storage file into the series of its enhanced MR images, with the images' Rows:
    it was taken for an image cut before its pixel data, and three complete series of a real corpus
    (neurolabusc's dcm_qa_cs_dl) were refused. Raw data never holds pixel data."""
    truth = write_series(tmp_path)
    source = pydicom.dcmread(truth.paths[0])
    raw = _without_pixels(
        pydicom.uid.RawDataStorage,
        SeriesInstanceUID=source.SeriesInstanceUID,
        StudyInstanceUID=source.StudyInstanceUID,
        Modality="MR",
        Rows=source.Rows,
        Columns=source.Columns,
        InstanceNumber=1,
    )
    raw.save_as(tmp_path / "0001_Raw.dcm", enforce_file_format=True)
    result = scan_tree(tmp_path)
    assert [s.problems for s in result.series] == [()]
    assert [s.reason for s in result.skipped] == ["no pixel data (Raw Data Storage)"]
    assert load_volume(result.series[0]).array.shape == truth.voxels.shape


def test_instance_numbers_that_start_above_one_are_a_warning(tmp_path: Path) -> None:
    write_series(tmp_path, first_instance=2)
    series = only_series(tmp_path)
    assert kinds(series) == {"possibly_incomplete": False}
    assert series.problems[0].message.startswith("InstanceNumbers run 2-9 without a gap but do not start at 1")


def test_fewer_images_than_images_in_acquisition_is_a_warning(tmp_path: Path) -> None:
    def edit(k: int, ds: Dataset) -> None:
        ds.ImagesInAcquisition = 9

    write_series(tmp_path, edit=edit)
    series = only_series(tmp_path)
    assert kinds(series) == {"possibly_incomplete": False}
    assert series.problems[0].message == "ImagesInAcquisition announces 9 image(s), 8 found (acquisition 1)"
    assert series.is_loadable


def test_a_pipe_in_a_series_folder_claims_nothing(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 8, 8))
    os.mkfifo(tmp_path / "pipe.dcm")  # opening it would block the scan; it is no slice of anything
    result = scan_tree(tmp_path)
    (series,) = result.series
    assert series.problems == () and series.files == truth.paths
    assert [(f.path.name, f.reason) for f in result.skipped] == [
        ("pipe.dcm", "not a regular file (a pipe, socket or device)")
    ]


def test_a_slice_that_became_a_pipe_since_the_scan_fails_its_series_without_blocking(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 8, 8))
    series = only_series(tmp_path)
    truth.paths[2].unlink()
    os.mkfifo(truth.paths[2])

    def unblock() -> None:  # a load that blocks on the pipe would wait forever: a writer ends the wait
        with contextlib.suppress(OSError):
            os.close(os.open(truth.paths[2], os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Timer(20, unblock)
    watchdog.start()
    try:
        with pytest.raises(SeriesError, match="no longer a regular file"):
            load_volume(series)
    finally:
        watchdog.cancel()


def test_compressed_file_claiming_more_frames_than_fragments_is_damaged(tmp_path: Path) -> None:
    """A fragment holds one frame at most: 3 million frames claimed by a file of one fragment were turned into
    3 million slices (90 s and 2.4 GB of scan); an honest multi-frame file still reads."""
    path = tmp_path / "e" / "enhanced.dcm"
    truth = write_enhanced_series(path, shape=(3, 8, 8))
    recode_file(path, RLELossless)
    assert only_series(tmp_path / "e").problems == ()
    np.testing.assert_array_equal(load_volume(only_series(tmp_path / "e")).array, truth.voxels)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3_000_000
    ds.save_as(path, enforce_file_format=True)
    result = scan_tree(tmp_path / "e")
    (series,) = result.series
    assert series.slices == () and [(p.kind, p.fatal) for p in series.problems] == [("no_readable_images", True)]
    assert "NumberOfFrames is 3,000,000 but the compressed pixel data holds 3 fragment(s)" in series.problems[0].message


def test_unreadable_files_of_unknown_series_alone_in_a_folder_get_a_failed_row(tmp_path: Path) -> None:
    """Cut before their SeriesInstanceUID, in a folder of no series: they were only listed as skipped, and the
    run said ok with exit 0. An empty file alone claims nothing."""
    good = write_series(tmp_path / "good", shape=(3, 8, 8), seed=1)
    cut = write_series(tmp_path / "cut", shape=(3, 8, 8), seed=2)
    for path in cut.paths:
        path.write_bytes(path.read_bytes()[:200])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "IM0001.dcm").write_bytes(b"")
    result = scan_tree(tmp_path)
    by_key = {s.key: s for s in result.series}
    orphans = [s for key, s in by_key.items() if key.startswith("unreadable.")]
    assert len(by_key) == 2 and by_key[good.series_instance_uid].problems == ()
    (row,) = orphans
    assert [(p.kind, p.fatal) for p in row.problems] == [("no_readable_images", True)]
    assert row.problems[0].message.startswith("3 DICOM file(s) whose series cannot be read, in a folder of no other")
    assert row.slices == () and not row.is_loadable
    assert row.key in {s.key for s in scan_tree(tmp_path).series}  # the same key on every scan


@pytest.mark.parametrize(
    ("name", "marker", "size_at"),
    [
        ("JPEG-LL.dcm", b"\xff\xc3", 5),  # JPEG Lossless: SOF3, then length, precision, rows, columns
        ("MR_small_jpeg_ls_lossless.dcm", b"\xff\xf7", 5),  # JPEG-LS: SOF55
        ("MR_small_jp2klossless.dcm", b"\xff\x4f\xff\x51", 8),  # JPEG 2000: SOC, SIZ, length, caps, width...
    ],
)
def test_codestream_larger_than_the_header_is_damaged_before_decoding(
    tmp_path: Path, name: str, marker: bytes, size_at: int
) -> None:
    """A decoder allocates what the codestream says: a small file whose frame header claims 30000 x 30000 took
    gigabytes before pydicom saw the size was wrong. pydicom's own files pass as they are."""
    source = Path(get_testdata_file(name))
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / name).write_bytes(source.read_bytes())
    assert not any("codestream" in p.message for s in scan_tree(tmp_path / "real").series for p in s.problems)
    data = bytearray(source.read_bytes())
    at = data.index(marker, data.index(b"\xfe\xff\x00\xe0"))  # in the first fragment
    width = 4 if marker.startswith(b"\xff\x4f") else 2
    for offset in (size_at, size_at + width):  # rows then columns (JPEG), width then height (JPEG 2000)
        data[at + offset : at + offset + width] = (30000).to_bytes(width, "big")
    (tmp_path / "bomb").mkdir()
    (tmp_path / "bomb" / name).write_bytes(bytes(data))
    result = scan_tree(tmp_path / "bomb")
    reasons = [p.message for s in result.series for p in s.problems] + [f.reason for f in result.skipped]
    assert any("compressed frame 1 is 30000 x 30000 by its own codestream" in r for r in reasons), reasons


def test_deflate_bomb_is_damaged_before_it_is_inflated(tmp_path: Path) -> None:
    """A deflated dataset is inflated whole by pydicom: 80 MiB of zeros in a 80 kB file (a gigabyte in a
    megabyte took 3.3 GB to scan) is refused while the scan counts its inflated bytes as a stream."""
    truth = write_series(tmp_path / "bomb", shape=(2, 8, 8))
    ds = pydicom.dcmread(truth.paths[0])
    ds.PixelData = bytes(80 * 2**20)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(truth.paths[0], enforce_file_format=True)
    assert truth.paths[0].stat().st_size < 200_000
    recode_file(truth.paths[1], DeflatedExplicitVRLittleEndian)  # an honest deflated slice beside it
    result = scan_tree(tmp_path / "bomb")
    (skipped,) = result.skipped
    assert skipped.path == truth.paths[0] and skipped.reason.startswith("deflated data inflates to over 67,108,864")
    (series,) = result.series
    assert series.files == (truth.paths[1],)  # the honest slice is read; its series fails for the lost one
    assert any(p.kind == "unreadable_file_in_folder" for p in series.problems)


def test_values_stored_above_bit_0_fail_their_series(tmp_path: Path) -> None:
    """High Bit must be Bits Stored - 1 (values aligned at bit 0): pydicom keeps the low Bits Stored bits whatever
    High Bit says, so 12-bit values held in bits 4-15 would load as noise. An edge slice in that layout fails its
    series, naming the file; a well-formed series beside it is untouched."""
    truth = write_series(tmp_path / "bad")
    write_series(tmp_path / "good", seed=2)
    ds = pydicom.dcmread(truth.paths[0])
    stored = ds.pixel_array.astype(np.uint16) & 0x0FFF
    ds.BitsStored, ds.HighBit = 12, 15
    ds.PixelData = (stored << 4).astype(np.uint16).tobytes()
    ds.save_as(truth.paths[0], enforce_file_format=True)
    by_uid = {s.series_instance_uid: s for s in scan_tree(tmp_path).series}
    bad = by_uid[truth.series_instance_uid]
    assert kinds(bad)["unreadable_file"] is True
    assert f"{truth.paths[0].name}" in str(bad.problems) and "HighBit 15 with BitsStored 12" in str(bad.problems)
    (good,) = [s for uid, s in by_uid.items() if uid != truth.series_instance_uid]
    assert not good.fatal_problems


@pytest.mark.parametrize("size", [4096, 300_000])  # parsed from memory, and read from the file
def test_a_file_of_nul_bytes_is_a_lost_slice_but_data_after_nul_bytes_is_not_dicom(tmp_path: Path, size: int) -> None:
    """A file of NUL bytes (a copy whose data was never written) beside a series is fatal to it, as an empty file
    is; a raw mask that starts with NUL bytes and holds data further on is only not DICOM (the first version of
    the check looked at the first 1,156 bytes alone and failed the series)."""
    write_series(tmp_path / "lost")
    (tmp_path / "lost" / "IM_lost.dcm").write_bytes(bytes(size))
    assert "unreadable_file_in_folder" in {p.kind for p in only_series(tmp_path / "lost").problems}
    write_series(tmp_path / "mask")
    mask = bytearray(size)
    mask[size // 2] = 1
    (tmp_path / "mask" / "mask.raw").write_bytes(bytes(mask))
    result = scan_tree(tmp_path / "mask")
    assert [p.kind for p in result.series[0].problems] == []
    assert next(s.reason for s in result.skipped if s.path.name == "mask.raw").startswith("not a DICOM file")
