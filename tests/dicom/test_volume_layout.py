"""The scan's PixelLayout: native slices load without a second pydicom parse, and a changed file falls back."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

import innereye_batch.dicom.volume as volume_module
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series, without_layouts
from tests.dicom.test_volume_native import count_calls, rewrite_pixels
from tests.factory import read_with_simpleitk, recode_file, write_series


def touch_later(path: Path) -> None:
    """Move the file's modification time one second on, content and size unchanged."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("intercept", [-1024.0, 0.0, -1024.5], ids=["integer", "none", "fractional"])
def test_native_series_loads_without_parsing_again_and_equals_general_path_and_simpleitk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, implicit: bool, intercept: float
) -> None:
    truth = write_series(tmp_path, shape=(6, 14, 11), rescale_intercept=intercept, shuffle_names=True)
    if implicit:
        for path in truth.paths:
            recode_file(path, ImplicitVRLittleEndian)
    series = only_series(tmp_path)
    layouts = [ref.pixel for ref in series.slices]
    assert all(layout is not None for layout in layouts)
    assert {(layout.rows, layout.columns, layout.rescale_intercept) for layout in layouts if layout} == {
        (14, 11, intercept)
    }
    general = load_volume(without_layouts(series)).array
    reads = count_calls(monkeypatch, volume_module.pydicom, "dcmread")
    decodes = count_calls(monkeypatch, volume_module, "pixel_array")
    for workers in (1, 3):
        fast = load_volume(series, workers=workers).array
        np.testing.assert_array_equal(fast, general)
        np.testing.assert_array_equal(fast, truth.voxels)
    assert reads == [] and decodes == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_with_simpleitk(truth.paths)), fast)


def test_layout_survives_pickling_to_loader_workers(tmp_path: Path) -> None:
    write_series(tmp_path, shape=(3, 8, 6))
    series = only_series(tmp_path)
    copy = pickle.loads(pickle.dumps(series))
    assert copy == series and copy.slices[0].pixel == series.slices[0].pixel is not None
    np.testing.assert_array_equal(load_volume(copy).array, load_volume(series).array)


def test_file_touched_after_the_scan_is_parsed_again_and_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = write_series(tmp_path, shape=(4, 10, 8))
    series = only_series(tmp_path)
    touch_later(truth.paths[2])
    reads = count_calls(monkeypatch, volume_module.pydicom, "dcmread")
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)
    assert len(reads) == 1  # only the touched file


def test_header_rewritten_with_the_old_mtime_restored_is_parsed_again(tmp_path: Path) -> None:
    """``cp -p`` or ``touch -d`` can put mtime back; the status-change time still tells the file changed."""
    truth = write_series(tmp_path, shape=(4, 10, 8))
    series = only_series(tmp_path)
    victim = truth.paths[2]
    before = victim.stat()
    data = victim.read_bytes()
    assert data.count(b"-1024") == 1
    victim.write_bytes(data.replace(b"-1024", b"-1000"))  # RescaleIntercept edited: same size, same offsets
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    loaded = load_volume(series).array
    np.testing.assert_array_equal(loaded[2], truth.voxels[2] + 24)  # the new intercept, not the scanned one
    np.testing.assert_array_equal(loaded[[0, 1, 3]], truth.voxels[[0, 1, 3]])


def test_file_replaced_by_another_instance_of_the_same_size_raises_naming_it(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 10, 8))
    series = only_series(tmp_path)
    victim = truth.paths[1]
    ds = pydicom.dcmread(victim)
    old_uid = ds.SOPInstanceUID
    ds.SOPInstanceUID = old_uid[:-1] + ("1" if old_uid[-1] != "1" else "2")  # same length, same file size
    ds.save_as(victim, enforce_file_format=True)
    touch_later(victim)  # a file system with coarse timestamps might otherwise keep the old mtime
    assert victim.stat().st_size == series.slices[1].pixel.file_size  # type: ignore[union-attr]
    with pytest.raises(SeriesError, match="SOPInstanceUID changed since the scan") as error:
        load_volume(series)
    assert str(victim) in error.value.reason


def test_file_grown_after_the_scan_is_parsed_again_with_its_new_values(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 10, 8), rescale_intercept=0.0)
    series = only_series(tmp_path)
    victim = truth.paths[3]
    ds = pydicom.dcmread(victim)
    ds.ImageComments = "rewritten after the scan"  # moves the pixel data: the recorded offset is stale
    ds.PixelData = (ds.pixel_array + 5).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(victim, enforce_file_format=True)
    assert victim.stat().st_size != series.slices[3].pixel.file_size  # type: ignore[union-attr]
    expected = truth.voxels.copy()
    expected[3] += 5
    np.testing.assert_array_equal(load_volume(series).array, expected)


def test_file_cut_after_the_scan_raises_naming_it(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8))
    series = only_series(tmp_path)
    victim = truth.paths[0]
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(SeriesError, match="cannot decode pixel data") as error:
        load_volume(series)
    assert str(victim) in error.value.reason


def test_12_bit_stored_gets_no_layout(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 8, 6), rescale_intercept=0.0)
    for path in truth.paths:
        stored = pydicom.dcmread(path).pixel_array
        rewrite_pixels(path, (stored.astype(np.int32) & 0x0FFF).astype(np.uint16), 16, 12, False)
    series = only_series(tmp_path)
    assert [ref.pixel for ref in series.slices] == [None] * 3


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian])
def test_compressed_and_deflated_files_get_no_layout_and_the_rest_keep_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: pydicom.uid.UID
) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8))
    recode_file(truth.paths[1], syntax)
    series = only_series(tmp_path)
    assert [ref.pixel is not None for ref in series.slices] == [True, False, True]
    reads = count_calls(monkeypatch, volume_module.pydicom, "dcmread")
    decodes = count_calls(monkeypatch, volume_module, "pixel_array")
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)
    assert len(decodes) == 1  # the recoded file alone goes through pydicom
    assert len(reads) == (1 if syntax == DeflatedExplicitVRLittleEndian else 0)  # inflated in memory first


def test_pixel_spacing_rewritten_after_the_scan_is_refused(tmp_path: Path) -> None:
    """A corrected re-send with another PixelSpacing, after the scan: its values were loaded and placed on the
    scanned grid (0.8 mm) although the file now says 1.6 mm."""
    truth = write_series(tmp_path, shape=(4, 10, 8), spacing=(2.5, 0.8, 0.7))
    series = only_series(tmp_path)
    victim = truth.paths[2]
    ds = pydicom.dcmread(victim)
    ds.PixelSpacing = ["1.6", "1.4"]
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(SeriesError, match=r"PixelSpacing changed since the scan \(0.8\\0.7 -> 1.6\\1.4 mm\)"):
        load_volume(series)


def test_a_split_stack_whose_spacings_vary_within_the_scans_tolerance_loads(tmp_path: Path) -> None:
    """Two time points at the same positions; the second's PixelSpacing strings vary by 0.1 % (each within the
    scan's tolerance of the first file, which it groups by). Its stack takes its geometry from its own first
    image, 0.2 % from some of its slices: parsed again at load, they must not be taken for rewritten files."""
    uid = "1.2.826.0.1.3680043.8.498.1"
    spacings = {("A", k): "0.8" for k in range(4)} | {("B", k): v for k, v in enumerate(["0.8008", "0.7992"] * 2)}
    for volume, prefix in ((1, "A"), (2, "B")):

        def edit(k: int, ds: pydicom.Dataset, prefix: str = prefix, volume: int = volume) -> None:
            ds.TemporalPositionIdentifier = volume
            ds.PixelSpacing = [spacings[(prefix, k)], "0.7"]

        write_series(
            tmp_path,
            shape=(4, 10, 8),
            modality="MR",
            series_instance_uid=uid,
            study_instance_uid=uid + ".9",
            frame_of_reference_uid=uid + ".8",
            name_prefix=prefix,
            first_instance=1 + 4 * (volume - 1),
            edit=edit,
            transfer_syntax=RLELossless,  # parsed again at load: the check applies
            seed=volume,
            rescale_intercept=0.0,
        )
    stacks = scan_tree(tmp_path).series
    assert [s.key[len(uid) :] for s in stacks] == [".t1", ".t2"]
    for series in stacks:
        assert load_volume(series).array.shape == (4, 10, 8)


def test_a_multi_frame_file_rewritten_after_the_scan_fails_the_load(tmp_path: Path) -> None:
    """A re-export of an enhanced file into the input folder between the scan and the load: the same instance with
    its frames stored in reverse order (each position travels with its frame) and another PixelSpacing. Its frames
    were placed where the scan found them, so the volume came back mirrored along z on the old spacing, ok."""
    from tests.factory import write_enhanced_series

    generated = write_enhanced_series(tmp_path / "e" / "enhanced.dcm")
    series = only_series(tmp_path / "e")
    assert np.array_equal(load_volume(series).array, generated.voxels)
    dataset = pydicom.dcmread(generated.paths[0])
    frames = dataset.pixel_array
    dataset.PerFrameFunctionalGroupsSequence = list(reversed(list(dataset.PerFrameFunctionalGroupsSequence)))
    dataset.PixelData = frames[::-1].copy().tobytes()
    dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = ["1.8", "1.6"]
    dataset.save_as(generated.paths[0], enforce_file_format=True)
    with pytest.raises(SeriesError, match=r"changed since the scan .*scan again"):
        load_volume(series)
    rescanned = only_series(tmp_path / "e")
    assert np.array_equal(load_volume(rescanned).array, generated.voxels)  # scanned again: placed as it is now
    assert rescanned.geometry.spacing[1:] == pytest.approx((1.8, 1.6))
