"""12-bit JPEG Extended decodes (GDCM where pylibjpeg cannot), and the scan says when no decoder can read a syntax."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path

import gdcm
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import MPEG2MPML, UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGExtended12Bit

from innereye_batch.dicom.codecs import EIGHT_BIT_ONLY_PLUGINS, GDCM_JPEG12_PLUGIN, decoder_problems, register_decoders
from innereye_batch.dicom.scan import scan_tree
from innereye_batch.dicom.volume import load_volume
from innereye_batch.errors import SeriesError
from tests.dicom.oracle import only_series
from tests.factory import write_series

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
LOSSY_12_BIT = TEST_FILES / "JPEG-lossy.dcm"
"""12-bit JPEG Extended whose scan header says Se = 0 (the standard wants 63): GDCM reads it, libjpeg refuses."""
STANDARD_12_BIT = TEST_FILES / "JPGExtended.dcm"
"""The same image with a standard scan header."""

PLUGIN_MODULES = {
    "gdcm": ("pydicom.pixels.decoders.gdcm", "_decode_frame"),
    "pylibjpeg": ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"),
    GDCM_JPEG12_PLUGIN: ("innereye_batch.dicom.gdcm_jpeg12", "decode_frame"),
}

Unavailable = Callable[..., None]


@pytest.fixture
def make_unavailable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Unavailable]:
    """Re-register plugins of a syntax as pydicom does when their package is missing; restored afterwards.

    GDCM is made absent through pydicom's own flag (HAVE_GDCM, which our plugin reads too), pylibjpeg through its
    module's ``is_available``; the plugins are then removed and added again, so pydicom's registry lists them
    as missing dependencies, exactly as on a machine without the package.
    """
    register_decoders()

    def unavailable(syntax: UID, *labels: str) -> None:
        decoder = get_decoder(syntax)
        monkeypatch.setattr(decoder, "_available", dict(decoder._available))  # restored on teardown
        monkeypatch.setattr(decoder, "_unavailable", dict(decoder._unavailable))
        for label in labels:
            module_name, function = PLUGIN_MODULES[label]
            if label in ("gdcm", GDCM_JPEG12_PLUGIN):
                monkeypatch.setattr("pydicom.pixels.decoders.gdcm.HAVE_GDCM", False)
            else:
                monkeypatch.setattr(importlib.import_module(module_name), "is_available", lambda uid: False)
            decoder.remove_plugin(label)
            decoder.add_plugin(label, (module_name, function))
        assert not set(labels) & set(decoder.available_plugins)

    yield unavailable


def placed_copy(source: Path, folder: Path) -> Path:
    """A copy of ``source`` (pixel data untouched) given the geometry that pydicom's test file lacks: the scan never
    invents a position, orientation, pixel spacing or slice thickness (a file without them is refused for that)."""
    ds = pydicom.dcmread(source)
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / source.name)
    return folder / source.name


def gdcm_reading(path: Path) -> np.ndarray:
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    image = reader.GetImage()
    values = np.frombuffer(image.GetBuffer().encode("utf-8", "surrogateescape"), dtype=np.uint16)
    return values.reshape(image.GetDimension(1), image.GetDimension(0))


def test_pydicoms_gdcm_and_pillow_plugins_still_decline_12_bit_jpeg() -> None:
    """Keeps EIGHT_BIT_ONLY_PLUGINS true: if pydicom lifts these limits, this fails and the table goes."""
    register_decoders()
    available = get_decoder(JPEGExtended12Bit).available_plugins
    for label in EIGHT_BIT_ONLY_PLUGINS[JPEGExtended12Bit]:
        assert label in available
        with pytest.raises(RuntimeError, match="12-bit precision"):
            pixel_array(str(STANDARD_12_BIT), decoding_plugin=label)


def test_12_bit_jpeg_that_pylibjpeg_rejects_decodes_like_gdcm_and_simpleitk(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="scan stop must be 63"):
        pixel_array(str(LOSSY_12_BIT), decoding_plugin="pylibjpeg")
    copy = placed_copy(LOSSY_12_BIT, tmp_path)
    assert pydicom.dcmread(copy).PixelData == pydicom.dcmread(LOSSY_12_BIT).PixelData
    series = only_series(tmp_path)
    assert series.problems == ()
    volume = load_volume(series).array[0]
    assert volume.shape == (1024, 256) and volume.max() == 264.0
    np.testing.assert_array_equal(volume, gdcm_reading(LOSSY_12_BIT))
    np.testing.assert_array_equal(volume, sitk.GetArrayFromImage(sitk.ReadImage(str(LOSSY_12_BIT)))[0])
    # An independent decoder (libjpeg, via pylibjpeg) on the same image with a standard header: lossy JPEG
    # decoders may round apart by one.
    standard = pixel_array(str(STANDARD_12_BIT), decoding_plugin="pylibjpeg").astype(np.float32)
    assert np.abs(standard - volume).max() <= 1.0
    assert np.mean(standard != volume) < 0.05


def test_our_plugin_decodes_the_standard_file_as_well() -> None:
    register_decoders()
    ours = pixel_array(str(STANDARD_12_BIT), decoding_plugin=GDCM_JPEG12_PLUGIN)
    np.testing.assert_array_equal(ours, gdcm_reading(STANDARD_12_BIT))


def test_gdcm_is_tried_after_the_other_plugins() -> None:
    register_decoders()
    for syntax in (JPEG2000Lossless, JPEGExtended12Bit):
        order = list(get_decoder(syntax)._available)
        assert order.index("pylibjpeg") < order.index("gdcm"), order
    assert list(get_decoder(JPEGExtended12Bit)._available)[-1] == GDCM_JPEG12_PLUGIN


def test_every_installed_syntax_has_a_decoder() -> None:
    assert decoder_problems(JPEGExtended12Bit, 12) == ()
    assert decoder_problems(JPEGExtended12Bit, 8) == ()
    assert decoder_problems(JPEG2000Lossless, 16) == ()
    assert decoder_problems(ExplicitVRLittleEndian, 16) == ()


def test_syntax_pydicom_cannot_decode_at_all() -> None:
    (problem,) = decoder_problems(MPEG2MPML, 8)
    assert problem.fatal and problem.kind == "no_decoder"
    assert problem.message.startswith("MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100): pydicom has no")
    (unknown,) = decoder_problems("1.2.3.4.5", 8)
    assert unknown.message.startswith("1.2.3.4.5: pydicom has no pixel data decoder")


def test_without_gdcm_and_pylibjpeg_12_bit_jpeg_has_no_decoder(make_unavailable: Unavailable) -> None:
    make_unavailable(JPEGExtended12Bit, "gdcm", GDCM_JPEG12_PLUGIN, "pylibjpeg")
    (problem,) = decoder_problems(JPEGExtended12Bit, 12)
    assert problem.fatal and problem.kind == "no_decoder"
    message = problem.message
    assert message.startswith("JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51) with 12 bits stored:")
    assert "(installed: pillow, which decode 8-bit samples only)" in message
    assert "pylibjpeg-libjpeg>=2.1" in message and "python-gdcm>=3.0.10 (pip install 'innereye-batch[gdcm]')" in message
    assert "gdcm - requires gdcm>=3.0.10" not in message  # pydicom's GDCM plugin would not help at 12 bits
    assert decoder_problems(JPEGExtended12Bit, 8) == ()  # Pillow reads 8-bit JPEG Extended


@pytest.mark.parametrize("missing", [("gdcm", GDCM_JPEG12_PLUGIN), ("pylibjpeg",)], ids=["no-gdcm", "no-pylibjpeg"])
def test_either_gdcm_or_pylibjpeg_is_enough_for_12_bit_jpeg(make_unavailable: Unavailable, missing: tuple[str]) -> None:
    make_unavailable(JPEGExtended12Bit, *missing)
    assert decoder_problems(JPEGExtended12Bit, 12) == ()
    volume = pixel_array(str(STANDARD_12_BIT))
    assert np.abs(volume.astype(np.float32) - gdcm_reading(STANDARD_12_BIT)).max() <= 1.0


def test_scan_fails_only_the_series_nothing_can_decode(tmp_path: Path, make_unavailable: Unavailable) -> None:
    make_unavailable(JPEGExtended12Bit, "gdcm", GDCM_JPEG12_PLUGIN, "pylibjpeg")
    placed_copy(LOSSY_12_BIT, tmp_path / "jpeg")
    good = write_series(tmp_path / "ct", shape=(3, 8, 8))
    series = {s.series_instance_uid: s for s in scan_tree(tmp_path).series}
    jpeg = next(s for uid, s in series.items() if uid != good.series_instance_uid)
    assert [p.kind for p in jpeg.fatal_problems] == ["no_decoder"]
    with pytest.raises(SeriesError, match="no_decoder: JPEG Extended"):
        load_volume(jpeg)
    assert series[good.series_instance_uid].problems == ()
