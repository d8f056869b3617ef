"""load_volume on uncompressed little-endian files: at most one parse per file, every bit layout and rescale exact.

The general path (a file parsed again) is what a slice without a scan's PixelLayout takes; test_volume_layout.py
covers the layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

import innereye_batch.dicom.volume as volume_module
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series, without_layouts
from tests.factory import read_with_simpleitk, recode_file, write_series


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count calls of ``owner.name`` (still calling it) for the rest of the test."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def rewrite_pixels(path: Path, stored: np.ndarray, bits_allocated: int, bits_stored: int, signed: bool) -> None:
    """Replace a file's pixel data with ``stored`` (already in the allocated little-endian type)."""
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_general_path_reads_full_width_values_once_without_the_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, signed: bool
) -> None:
    truth = write_series(tmp_path, shape=(5, 12, 10), rescale_intercept=0.0 if signed else -1024.0, shuffle_names=True)
    if syntax != ExplicitVRLittleEndian:
        for path in truth.paths:
            recode_file(path, pydicom.uid.UID(syntax))
    assert pydicom.dcmread(truth.paths[0]).PixelRepresentation == (1 if signed else 0)
    series = without_layouts(only_series(tmp_path))

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("pydicom's decoder was not needed")

    monkeypatch.setattr(volume_module, "pixel_array", no_decoder)
    reads = count_calls(monkeypatch, volume_module.pydicom, "dcmread")
    for workers in (1, 3):
        np.testing.assert_array_equal(load_volume(series, workers=workers).array, truth.voxels)
    assert len(reads) == 2 * len(truth.paths)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_unused_high_bits_are_cleared_by_pydicom_with_one_read_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed: bool
) -> None:
    values = np.arange(-2048, 2048, 8) if signed else np.arange(0, 4096, 8)  # every 12-bit range, both ends
    voxels = np.resize(values, (4, 16, 8)).astype(np.float32)
    truth = write_series(tmp_path, voxels=voxels, rescale_intercept=0.0)
    for path in truth.paths:
        stored = pydicom.dcmread(path).pixel_array.astype(np.int32)
        garbage = np.uint16(0xA000)  # overlay bits above bit 11, which must be ignored
        rewrite_pixels(path, (stored & 0x0FFF).astype(np.uint16) | garbage, 16, 12, signed)
    series = only_series(tmp_path)
    assert all(ref.pixel is None for ref in series.slices)  # unused high bits: pydicom must mask them
    reads = count_calls(monkeypatch, volume_module.pydicom, "dcmread")
    decodes = count_calls(monkeypatch, volume_module, "pixel_array")
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)
    assert len(reads) == len(decodes) == len(truth.paths)


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (32, True), (32, False)])
def test_8_and_32_bits_allocated(tmp_path: Path, bits: int, signed: bool) -> None:
    low = -70_000 if signed else 0
    high = 255 if bits == 8 else 90_000  # beyond 16 bits, still exact in float32
    voxels = np.linspace(low, high, 3 * 9 * 7).round().reshape(3, 9, 7).astype(np.float32)
    truth = write_series(tmp_path, voxels=np.clip(voxels, -1000, 1000), rescale_intercept=0.0)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    for path, plane in zip(truth.paths, voxels, strict=True):
        rewrite_pixels(path, plane.astype(dtype), bits, bits, signed)
    series = only_series(tmp_path)
    assert all(ref.pixel is not None and ref.pixel.bits_allocated == bits for ref in series.slices)
    np.testing.assert_array_equal(load_volume(series).array, voxels)
    np.testing.assert_array_equal(load_volume(without_layouts(series)).array, voxels)


def test_each_slice_keeps_its_own_fractional_rescale(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(4, 10, 8), rescale_intercept=0.0)
    rescales = [(0.5, -1024.25), (1.0, -1024.0), (2.5, 3.75), (1.0, 0.5)]
    expected = []
    for path, (slope, intercept) in zip(truth.paths, rescales, strict=True):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.save_as(path, enforce_file_format=True)
        expected.append((ds.pixel_array.astype(np.float64) * slope + intercept).astype(np.float32))
    series = only_series(tmp_path)
    assert [(ref.pixel.rescale_slope, ref.pixel.rescale_intercept) for ref in series.slices if ref.pixel] == rescales
    volume = load_volume(series)
    np.testing.assert_array_equal(volume.array, np.stack(expected))
    np.testing.assert_array_equal(load_volume(without_layouts(series)).array, volume.array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_with_simpleitk(truth.paths)), volume.array)


def test_big_endian_series_goes_through_pydicom_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8), rescale_intercept=0.0)
    for path in truth.paths:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
    series = only_series(tmp_path)
    assert series.transfer_syntaxes == (ExplicitVRBigEndian,)
    assert all(ref.pixel is None for ref in series.slices)
    decodes = count_calls(monkeypatch, volume_module, "pixel_array")
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)
    assert len(decodes) == len(truth.paths)


def test_one_compressed_file_sends_the_general_path_through_pydicom_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8))
    recode_file(truth.paths[1], RLELossless)
    series = without_layouts(only_series(tmp_path))
    decodes = count_calls(monkeypatch, volume_module, "pixel_array")
    np.testing.assert_array_equal(load_volume(series).array, truth.voxels)
    assert len(decodes) == len(truth.paths)


def test_pixel_data_cut_short_after_the_scan_raises_naming_the_file(tmp_path: Path) -> None:
    truth = write_series(tmp_path, shape=(3, 10, 8))
    series = only_series(tmp_path)
    victim = truth.paths[2]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(SeriesError, match="cannot decode pixel data") as error:
        load_volume(series)
    assert str(victim) in error.value.reason
