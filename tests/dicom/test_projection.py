"""Projection images (CR, DX, ...) map to the 16-bit PNG convention exactly as the explicit DICOM formulas say.

The reference here is written from PS3.3 (C.11.1 modality LUT / rescale, C.11.2 VOI LUT and window functions,
C.7.6.3.1.2 MONOCHROME1) with plain numpy, independently of pydicom's LUT functions that the module uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from innereye_batch.dicom.projection import png_convention, projection_images, read_projection_images
from innereye_batch.errors import DicomError
from tools.cxr_phantom import identity_voi_lut, make_chest, projection_dataset, quantise

PYDICOM_CR = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "77654033" / "CR1" / "6154"


def external(name: str) -> Path:
    """A file of the pydicom-data package (a dev dependency); never downloaded."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"{name} not found: install the dev extra (pydicom-data)")
    return Path(str(path))


# ---- the reference: explicit formulas ------------------------------------------------------------------------


def stored_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def lut_lookup(values: np.ndarray, first: int, data: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.1.1.1 / C.11.2.1.1: below the first mapped value -> first entry, above the last -> last entry."""
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(data) - 1)
    return data[index].astype(np.float64)


def lut_data(item: pydicom.Dataset) -> np.ndarray:
    """LUT Data as unsigned 16-bit entries, whether read as US (a list) or OW (little-endian bytes)."""
    value = item.LUTData
    return np.asarray(value, dtype=np.uint16) if isinstance(value, list) else np.frombuffer(value, dtype="<u2")


def window_unit(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The window's output as a fraction of its output range (PS3.3 C.11.2.1.2.1 and C.11.2.1.3)."""
    if function == "LINEAR":
        unit = (x - (center - 0.5)) / (width - 1) + 0.5
        unit[x <= center - 0.5 - (width - 1) / 2] = 0.0
        unit[x > center - 0.5 + (width - 1) / 2] = 1.0
        return unit
    if function == "LINEAR_EXACT":
        unit = (x - center) / width + 0.5
        unit[x <= center - width / 2] = 0.0
        unit[x > center + width / 2] = 1.0
        return unit
    assert function == "SIGMOID"
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


def to_png(unit: np.ndarray, monochrome1: bool) -> np.ndarray:
    unit = np.clip(unit, 0.0, 1.0)
    return np.rint((1.0 - unit if monochrome1 else unit) * 65535).astype(np.uint16)


def reference(
    stored: np.ndarray,
    *,
    bits: int,
    signed: bool = False,
    monochrome1: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float, str] | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
) -> np.ndarray:
    low, high = stored_range(bits, signed)
    values = stored.astype(np.float64)
    if rescale is not None:
        values = values * rescale[0] + rescale[1]
        low, high = low * rescale[0] + rescale[1], high * rescale[0] + rescale[1]
    if voi_lut is not None:
        first, lut_bits, data = voi_lut
        return to_png(lut_lookup(values, first, data) / (2**lut_bits - 1), monochrome1)
    if window is not None:
        return to_png(window_unit(values, *window), monochrome1)
    return to_png((values - low) / (high - low), monochrome1)


def chest_values(bits: int, seed: int = 3, shape: tuple[int, int] = (64, 48)) -> np.ndarray:
    return quantise(make_chest(seed, shape=shape).density, bits)


# ---- real files -----------------------------------------------------------------------------------------------


def test_pydicom_cr_monochrome1_window_and_rescale_equal_the_formulas() -> None:
    ds = pydicom.dcmread(PYDICOM_CR)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "RescaleSlope" in ds and "WindowCenter" in ds
    image = read_projection_images(PYDICOM_CR)[0]
    expected = reference(
        ds.pixel_array,
        bits=12,
        monochrome1=True,
        rescale=(float(ds.RescaleSlope), float(ds.RescaleIntercept)),
        window=(float(ds.WindowCenter), float(ds.WindowWidth), "LINEAR"),
    )
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.inverted and image.voi == "window 1600/2800 LINEAR"
    assert image.pixel_spacing == (0.1, 0.1) and image.spacing_source == "ImagerPixelSpacing"
    assert (image.modality, image.frame_index, image.number_of_frames) == ("CR", 0, 1)
    assert image.sop_instance_uid == ds.SOPInstanceUID and image.series_instance_uid == ds.SeriesInstanceUID


def test_wg04_cr_15_bit_monochrome1_equals_the_formulas_and_lossless_j2k_gives_the_same_png() -> None:
    uncompressed, j2k = external("RG1_UNCR.dcm"), external("RG1_J2KR.dcm")
    ds = pydicom.dcmread(uncompressed)
    image = read_projection_images(uncompressed)[0]
    expected = reference(
        ds.pixel_array, bits=15, monochrome1=True, window=(float(ds.WindowCenter), float(ds.WindowWidth), "LINEAR")
    )
    np.testing.assert_array_equal(image.pixels, expected)
    np.testing.assert_array_equal(read_projection_images(j2k)[0].pixels, image.pixels)
    # PixelSpacing "0.000\0.000" is no spacing at all
    assert image.pixel_spacing is None and image.spacing_source is None


def test_voi_lut_sequence_of_a_real_file_is_looked_up_by_hand() -> None:
    path = external("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    data = lut_data(ds.VOILUTSequence[0])
    image = read_projection_images(path, modalities=["OT"])[0]
    expected = reference(ds.pixel_array, bits=8, voi_lut=(descriptor[1], descriptor[2], data))
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.voi == "VOI LUT Sequence" and not image.inverted


def test_modality_lut_sequence_of_a_real_file_is_looked_up_by_hand() -> None:
    path = external("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    item = ds.ModalityLUTSequence[0]
    entries, first, bits = item.LUTDescriptor
    data = lut_data(item)[:entries]
    image = read_projection_images(path, modalities=["OT"])[0]
    values = lut_lookup(ds.pixel_array.astype(np.float64), first, data)
    np.testing.assert_array_equal(image.pixels, to_png(values / (2**bits - 1), False))


# ---- generated files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_without_voi_the_stored_range_fills_uint16(tmp_path: Path, bits: int, photometric: str) -> None:
    stored = chest_values(bits)
    path = tmp_path / "image.dcm"
    projection_dataset(stored, modality="DX", photometric=photometric, bits_stored=bits).save_as(
        path, enforce_file_format=True
    )
    image = read_projection_images(path)[0]
    monochrome1 = photometric == "MONOCHROME1"
    np.testing.assert_array_equal(image.pixels, reference(stored, bits=bits, monochrome1=monochrome1))
    assert image.voi == "none" and image.inverted is monochrome1
    # exact scale factors: 8 bits x 257, 16 bits unchanged (inverted: 65535 - v)
    if bits in (8, 16):
        direct = stored.astype(np.int64) * (257 if bits == 8 else 1)
        np.testing.assert_array_equal(image.pixels, 65535 - direct if monochrome1 else direct)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_window_functions_follow_the_standard(tmp_path: Path, function: str, photometric: str) -> None:
    stored = chest_values(12)
    center, width = 1700.0, 900.0
    ds = projection_dataset(
        stored, photometric=photometric, window=[(center, width), (100.0, 50.0)], voi_function=function
    )
    image = projection_images(ds)[0]
    expected = reference(stored, bits=12, monochrome1=photometric == "MONOCHROME1", window=(center, width, function))
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.voi == f"window {center:g}/{width:g} {function}"  # the first of two windows


def test_window_applies_after_rescale_in_rescaled_units(tmp_path: Path) -> None:
    stored = chest_values(12)
    ds = projection_dataset(stored, window=(500.0, 1200.0), rescale=(0.5, -200.0))
    image = projection_images(ds)[0]
    np.testing.assert_array_equal(
        image.pixels, reference(stored, bits=12, rescale=(0.5, -200.0), window=(500.0, 1200.0, "LINEAR"))
    )


def test_voi_lut_sequence_is_preferred_to_the_window() -> None:
    stored = chest_values(12)
    data = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 1023).astype(np.uint16)  # a 10-bit, non-linear LUT
    ds = projection_dataset(stored, window=(100.0, 10.0), voi_lut=(0, 10, data))
    image = projection_images(ds)[0]
    np.testing.assert_array_equal(image.pixels, reference(stored, bits=12, voi_lut=(0, 10, data)))
    assert image.voi == "VOI LUT Sequence"


def test_signed_stored_values_and_a_lut_with_a_negative_first_value() -> None:
    stored = chest_values(12).astype(np.int16) - 2048
    data = np.rint(np.linspace(0, 65535, 3000)).astype(np.uint16)
    ds = projection_dataset(stored, bits_stored=12, signed=True, voi_lut=(-1500, 16, data))
    np.testing.assert_array_equal(
        projection_images(ds)[0].pixels, reference(stored, bits=12, signed=True, voi_lut=(-1500, 16, data))
    )
    plain = projection_dataset(stored, bits_stored=12, signed=True)
    np.testing.assert_array_equal(projection_images(plain)[0].pixels, reference(stored, bits=12, signed=True))


def test_a_voi_lut_of_8_bit_entries_is_indexed_past_256() -> None:
    """8-bit entries, 4096 of them: pydicom 3.0 indexes such a table with 8-bit indices, which wrap (stored 3315
    gave entry 16 instead of 206), so the lookup is the module's own; packed bytes read as the 16-bit words do."""
    stored = chest_values(12)
    data = np.rint(np.arange(4096) * 255 / 4095).astype(np.uint16)
    words = projection_dataset(stored, voi_lut=(0, 8, data))
    expected = reference(stored, bits=12, voi_lut=(0, 8, data))
    np.testing.assert_array_equal(projection_images(words)[0].pixels, expected)
    packed = projection_dataset(stored, voi_lut=(0, 8, data))
    packed.VOILUTSequence[0].LUTData = data.astype(np.uint8).tobytes()
    np.testing.assert_array_equal(projection_images(packed)[0].pixels, expected)
    assert expected.max() > 50000  # the bright end reached: no index wrapped


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("window", [None, (2048.0, 4096.0), (1500.0, 1000.0)])
def test_a_negative_rescale_slope_keeps_the_polarity(photometric: str, window: tuple[float, float] | None) -> None:
    """Stored 4095 - s with slope -1 and intercept 4095 rescales to s: the same image as s stored plainly. The
    output range of the rescale (and of pydicom's windowing) runs from the lowest stored value's output, which
    here is the highest."""
    values = chest_values(12)
    inverted = (4095 - values.astype(np.int32)).astype(np.uint16)
    plain = projection_dataset(values, photometric=photometric, window=window)
    negative = projection_dataset(inverted, photometric=photometric, window=window, rescale=(-1.0, 4095.0))
    expected = reference(
        values, bits=12, monochrome1=photometric == "MONOCHROME1", window=(*window, "LINEAR") if window else None
    )
    np.testing.assert_array_equal(projection_images(plain)[0].pixels, expected)
    np.testing.assert_array_equal(projection_images(negative)[0].pixels, expected)


def test_a_slope_without_an_intercept_is_no_rescale() -> None:
    """The Modality LUT module needs both: a Rescale Slope alone is ignored (as pydicom's apply_modality_lut and
    apply_windowing do), so a negative one must not turn the window's output round either."""
    values = chest_values(12)
    plain = projection_dataset(values, window=(1500.0, 1000.0))
    slope_only = projection_dataset(values, window=(1500.0, 1000.0))
    slope_only.RescaleSlope = "-1"
    np.testing.assert_array_equal(projection_images(slope_only)[0].pixels, projection_images(plain)[0].pixels)


@pytest.mark.parametrize("rescale", [(1.0, -1024.0), (-1.0, 4095.0)])
def test_a_rescale_beside_a_modality_lut_sequence_changes_nothing(rescale: tuple[float, float]) -> None:
    """A (non-conforming) file with both: the LUT replaces the rescale, for the window's output range too. Before,
    pydicom's windowing passed the LUT's range through the rescale, and the image came out shifted (intercept
    -1024) or inverted (slope -1), classified as ok."""
    values = chest_values(12)
    identity = (0, 12, np.arange(4096, dtype=np.uint16))
    lut_only = projection_dataset(values, window=(2048.0, 4096.0), modality_lut=identity)
    both = projection_dataset(values, window=(2048.0, 4096.0), modality_lut=identity, rescale=rescale)
    expected = projection_images(lut_only)[0].pixels
    np.testing.assert_array_equal(projection_images(both)[0].pixels, expected)
    np.testing.assert_array_equal(expected, reference(values, bits=12, window=(2048.0, 4096.0, "LINEAR")))


def test_an_empty_voi_lut_function_is_linear(tmp_path: Path) -> None:
    """An empty VOI LUT Function (type 3, written empty) is its default, LINEAR; pydicom refuses the empty value,
    and the image was refused."""
    values = chest_values(12)
    dataset = projection_dataset(values, window=(1500.0, 1000.0))
    dataset.VOILUTFunction = ""
    dataset.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    image = projection_images(pydicom.dcmread(tmp_path / "empty.dcm"))[0]
    assert image.voi == "window 1500/1000 LINEAR"
    np.testing.assert_array_equal(image.pixels, reference(values, bits=12, window=(1500.0, 1000.0, "LINEAR")))


def test_equivalent_encodings_give_the_same_png() -> None:
    """MONOCHROME1 with a full-range window, or a VOI LUT spanning the stored range, equal MONOCHROME2 plain."""
    values = chest_values(12)
    plain = projection_images(projection_dataset(values))[0].pixels
    inverted = (4095 - values.astype(np.int32)).astype(np.uint16)
    variants = [
        projection_dataset(inverted, photometric="MONOCHROME1", window=(2048.0, 4096.0)),
        projection_dataset(inverted, photometric="MONOCHROME1", voi_lut=identity_voi_lut(12)),
        projection_dataset(values, window=(2047.5, 4095.0), voi_function="LINEAR_EXACT"),
        projection_dataset(values, modality="DX", voi_lut=identity_voi_lut(12, lut_bits=12)),
    ]
    for ds in variants:
        np.testing.assert_array_equal(projection_images(ds)[0].pixels, plain)
    assert plain.max() > 50000 and plain.min() < 10000  # white bone, dark air: the PNG uses its range


def test_voi_can_be_skipped_and_min_max_scaling_uses_the_image_range() -> None:
    stored = chest_values(12)
    ds = projection_dataset(stored, window=(1000.0, 200.0))
    skipped = projection_images(ds, apply_voi=False)[0]
    np.testing.assert_array_equal(skipped.pixels, reference(stored, bits=12))
    assert skipped.voi == "none"
    stretched = projection_images(projection_dataset(stored), scaling="min_max")[0].pixels
    low, high = float(stored.min()), float(stored.max())
    np.testing.assert_array_equal(stretched, to_png((stored - low) / (high - low), False))
    assert (stretched.min(), stretched.max()) == (0, 65535)


def test_multi_frame_file_gives_one_image_per_frame(tmp_path: Path) -> None:
    frames = np.stack([chest_values(12, seed=s) for s in (1, 2, 3)])
    path = tmp_path / "multi.dcm"
    projection_dataset(frames, modality="DX", photometric="MONOCHROME1").save_as(path, enforce_file_format=True)
    images = read_projection_images(path)
    assert [im.frame_index for im in images] == [0, 1, 2] and all(im.number_of_frames == 3 for im in images)
    for k, image in enumerate(images):
        np.testing.assert_array_equal(image.pixels, reference(frames[k], bits=12, monochrome1=True))
    only = read_projection_images(path, frames=[2])
    assert len(only) == 1 and only[0].frame_index == 2
    np.testing.assert_array_equal(only[0].pixels, images[2].pixels)
    with pytest.raises(DicomError, match="frame 3 does not exist"):
        read_projection_images(path, frames=[3])


def test_pixel_spacing_is_preferred_to_imager_pixel_spacing() -> None:
    ds = projection_dataset(chest_values(8), pixel_spacing=(0.15, 0.16), imager_pixel_spacing=(0.2, 0.2))
    image = projection_images(ds)[0]
    assert image.pixel_spacing == (0.15, 0.16) and image.spacing_source == "PixelSpacing"


# ---- refusals -------------------------------------------------------------------------------------------------


def refusal(ds: pydicom.Dataset, tmp_path: Path, **kwargs: object) -> str:
    path = tmp_path / "refused.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError) as caught:
        read_projection_images(path, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(str(path))
    return message


def test_refusals_name_the_file_and_the_cause(tmp_path: Path) -> None:
    values = chest_values(12)
    ct = projection_dataset(values)
    ct.Modality = "CT"
    assert "modality CT is not one of CR, DX" in refusal(ct, tmp_path, modalities=["CR", "DX"])
    processing = projection_dataset(values, modality="DX", presentation_intent="FOR PROCESSING")
    assert "FOR PROCESSING" in refusal(processing, tmp_path)
    contradictory = projection_dataset(values, modality="DX")
    contradictory.PresentationLUTShape = "INVERSE"
    assert "contradictory polarity" in refusal(contradictory, tmp_path)
    per_frame = projection_dataset(np.stack([values, values]), modality="DX")
    item = pydicom.Dataset()
    item.FrameVOILUTSequence = [pydicom.Dataset()]
    per_frame.PerFrameFunctionalGroupsSequence = [item, item]
    assert "FrameVOILUTSequence" in refusal(per_frame, tmp_path)
    mirror = projection_dataset(values, modality="DX", photometric="MONOCHROME1")
    mirror.PresentationLUTShape = "IDENTITY"
    assert "MONOCHROME1 with Presentation LUT Shape IDENTITY" in refusal(mirror, tmp_path)
    data = np.arange(4096, dtype=np.uint16)
    short = projection_dataset(values, voi_lut=(0, 16, data[:2000]))
    short.VOILUTSequence[0].LUTDescriptor = [4096, 0, 16]
    assert "VOI LUT Sequence: LUT Data holds 2000 entries, its LUT Descriptor announces 4096" in refusal(
        short, tmp_path
    )
    nine_bits = projection_dataset(values, modality_lut=(0, 9, data))
    assert "Modality LUT Sequence: LUT Descriptor gives 9 bits per entry" in refusal(nine_bits, tmp_path)
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    rgb.Modality = "DX"
    assert "RGB is not grey" in refusal(rgb, tmp_path)
    not_dicom = tmp_path / "not.dcm"
    not_dicom.write_bytes(b"hello")
    with pytest.raises(DicomError, match="cannot be read as DICOM"):
        read_projection_images(not_dicom)


def test_png_convention_rejects_colour_and_unknown_scaling() -> None:
    ds = projection_dataset(chest_values(8))
    with pytest.raises(ValueError, match="scaling"):
        png_convention(chest_values(8), ds, scaling="percentile")  # type: ignore[arg-type]
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(ValueError, match="not grey"):
        png_convention(chest_values(8), ds)


# ---- multi-frame files: only the frame asked for is decoded ---------------------------------------------------


def rle_multi_frame(frames: np.ndarray, undecodable: int | None = None, **header: Any) -> pydicom.Dataset:
    """A multi-frame DX in RLE Lossless; frame ``undecodable`` (if given) keeps its RLE header but loses its
    segments, so no decoder can read that frame (the others stay intact)."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    ds = projection_dataset(frames, modality="DX", **header)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    if undecodable is not None:
        encoded = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
        encoded[undecodable] = encoded[undecodable][:64]  # the header's segment offsets now point past the end
        ds.PixelData = encapsulate(encoded)
    return ds


def test_a_frame_is_decoded_alone_so_a_damaged_other_frame_does_not_stop_it(tmp_path: Path) -> None:
    """Issue: each frame of a multi-frame image is a work item, and decoding one used to decode every frame of
    the file (memory x frames, time quadratic in frames); a frame no decoder can read showed it: every item failed."""
    frames = np.stack([chest_values(12, seed=s) for s in (4, 5, 6)])
    header: dict[str, Any] = {"photometric": "MONOCHROME1", "window": (1800.0, 2600.0), "rescale": (1.5, -20.0)}
    path = tmp_path / "damaged.dcm"
    rle_multi_frame(frames, undecodable=0, **header).save_as(path, enforce_file_format=True)
    for k in (1, 2):
        (image,) = read_projection_images(path, frames=[k])
        assert (image.frame_index, image.number_of_frames) == (k, 3)
        alone = projection_images(projection_dataset(frames[k], modality="DX", **header))[0]
        np.testing.assert_array_equal(image.pixels, alone.pixels)
        assert (image.inverted, image.voi) == (alone.inverted, alone.voi) == (True, "window 1800/2600 LINEAR")
    with pytest.raises(DicomError, match=r"damaged\.dcm: pixel data cannot be decoded"):
        read_projection_images(path, frames=[0])
    with pytest.raises(DicomError, match="pixel data cannot be decoded"):
        read_projection_images(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_each_frame_maps_as_the_same_image_in_a_single_frame_file(tmp_path: Path, compressed: bool) -> None:
    """Every check of the single-frame path applies to the one frame decoded: unused high bits masked, VOI LUT
    Sequence, MONOCHROME1, in native and compressed syntaxes."""
    frames = np.stack([chest_values(12, seed=s) for s in (7, 8)])
    noisy = frames | np.uint16(0xA000)  # garbage above Bits Stored (12) that decoding must mask
    voi = (0, 16, np.clip(np.arange(4096) * 13, 0, 65535).astype(np.uint16))
    header: dict[str, Any] = {"photometric": "MONOCHROME1", "voi_lut": voi}
    ds = rle_multi_frame(noisy, **header) if compressed else projection_dataset(noisy, modality="DX", **header)
    path = tmp_path / "multi.dcm"
    ds.save_as(path, enforce_file_format=True)
    for k in (1, 0):
        (image,) = read_projection_images(path, frames=[k])
        alone = projection_images(projection_dataset(frames[k], modality="DX", **header))[0]
        np.testing.assert_array_equal(image.pixels, alone.pixels)
        assert (image.voi, image.inverted) == ("VOI LUT Sequence", True)


def test_decoded_values_outside_bits_stored_are_refused() -> None:
    """A JPEG 2000 stream of 16-bit values under BitsStored 12: pydicom returns them unmasked, and the 12-bit
    range pushed the image to white, classified (a reviewer's probe). The header and the data disagree: refused."""
    stored = chest_values(12).astype(np.uint16)
    ds = projection_dataset(stored, bits_stored=12)
    too_wide = stored.copy()
    too_wide[10, 10] = 50464
    with pytest.raises(DicomError, match=r"0?\.\.50464 lie outside the 0\.\.4095 that BitsStored 12 allows"):
        png_convention(too_wide, ds)
    png_convention(stored, ds)  # the values the header allows pass


@pytest.mark.parametrize("case", ["constant", "window outside the values", "lut below every value"])
def test_an_image_that_maps_to_one_value_is_refused(case: str) -> None:
    """The model would see a blank image, and classified it all the same (normal at 0.6)."""
    stored = chest_values(12)
    if case == "constant":
        ds = projection_dataset(np.full_like(stored, 1000))
    elif case == "window outside the values":
        ds = projection_dataset(stored, window=(40000.0, 400.0))
    else:
        ds = projection_dataset(stored, voi_lut=(5000, 16, np.arange(100, dtype=np.uint16) * 600))
    with pytest.raises(DicomError, match="would see a blank image"):
        projection_images(ds)


def test_a_signed_first_value_written_as_us_is_read_as_ss() -> None:
    """-1500 written as US (64036) for signed values: read as +64036, every value fell below the table and the
    image came out black, classified (a reviewer's probe; pydicom's own apply_voi_lut overflows on it)."""
    stored = chest_values(12).astype(np.int16) - 2048
    data = np.rint(np.linspace(0, 65535, 3000)).astype(np.uint16)
    expected = reference(stored, bits=12, signed=True, voi_lut=(-1500, 16, data))
    as_us = projection_dataset(stored, bits_stored=12, signed=True, voi_lut=(-1500, 16, data))
    descriptor = as_us.VOILUTSequence[0]["LUTDescriptor"]
    descriptor.VR, descriptor.value = "US", [len(data), 64036, 16]
    np.testing.assert_array_equal(projection_images(as_us)[0].pixels, expected)


def test_a_voi_lut_whose_descriptor_claims_16_bits_for_12_bit_entries_is_scaled_by_its_entries() -> None:
    """Some CRs (Agfa's) write LUT Descriptor [4096, 0, 16] over entries 0..4095: scaled to 16 bits, the image
    spanned 0..3154 of 65535 and was classified nearly black (a reviewer's probe)."""
    stored = chest_values(12)
    first, _, data = identity_voi_lut(12, lut_bits=12)
    claimed = projection_images(projection_dataset(stored, voi_lut=(first, 16, data)))[0]
    true = projection_images(projection_dataset(stored, voi_lut=(first, 12, data)))[0]
    np.testing.assert_array_equal(claimed.pixels, true.pixels)
    assert claimed.voi == "VOI LUT Sequence (entries of 12 bits, though its descriptor says 16)"
    assert true.voi == "VOI LUT Sequence" and true.pixels.max() > 50000  # not the 3154 of the 16-bit scaling


def test_a_lossy_stream_that_overshoots_bits_stored_a_little_is_kept() -> None:
    """A lossy JPEG 2000 stream coded at a higher precision than BitsStored rings past the range's end (4107 under
    12 bits, a reviewer's probe at 40:1): kept and clipped by the mapping, not refused as a wider stream is."""
    stored = chest_values(12).astype(np.uint16)
    ds = projection_dataset(stored, bits_stored=12)
    ringing = stored.copy()
    ringing[10, 10] = 4107
    mapped = png_convention(ringing, ds).pixels
    assert mapped[10, 10] == 65535
    np.testing.assert_array_equal(
        np.delete(mapped.ravel(), 10 * 48 + 10), np.delete(png_convention(stored, ds).pixels.ravel(), 10 * 48 + 10)
    )


def test_a_16_bit_voi_lut_that_does_not_reach_its_top_keeps_its_16_bits() -> None:
    """Only the known quirk (16 bits claimed for entries of 12 bits or fewer) is scaled by its entries: a 16-bit
    table whose top entry is 30000 is a conforming LUT, scaled as its descriptor says."""
    stored = chest_values(12)
    data = np.rint(np.arange(4096) * 30000 / 4095).astype(np.uint16)
    image = projection_images(projection_dataset(stored, voi_lut=(0, 16, data)))[0]
    np.testing.assert_array_equal(image.pixels, reference(stored, bits=12, voi_lut=(0, 16, data)))
    assert image.voi == "VOI LUT Sequence"
