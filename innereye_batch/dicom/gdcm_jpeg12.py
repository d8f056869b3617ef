"""A pydicom decoder plugin that decodes 12-bit JPEG Extended frames with GDCM (the optional python-gdcm).

pydicom's own GDCM plugin declines JPEG Extended (1.2.840.10008.1.2.4.51) with more than 8 bits stored, although
GDCM decodes it with its 12-bit libjpeg, and pylibjpeg-libjpeg rejects streams whose scan header bends the
standard (pydicom's JPEG-lossy.dcm) that GDCM and SimpleITK read. This plugin hands one frame to GDCM as an
encapsulated fragment and returns the decoded stored values. ``codecs.register_decoders`` adds it to pydicom's
registry after pydicom's own plugins, so it decodes only what they fail to. It follows pydicom's plugin
interface: ``DECODER_DEPENDENCIES``, ``is_available(uid)`` and a frame function.
"""

from __future__ import annotations

from typing import Any

from pydicom.uid import JPEGExtended12Bit

DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("python-gdcm>=3.0.10 (pip install 'innereye-batch[gdcm]')",)}
"""What pydicom reports as missing when the plugin is unavailable."""


def is_available(uid: str) -> bool:
    """True for JPEG Extended when pydicom found python-gdcm 3.0.10 or later."""
    from pydicom.pixels.decoders import gdcm as pydicom_gdcm

    version = getattr(pydicom_gdcm, "GDCM_VERSION", (0,))
    return uid == JPEGExtended12Bit and bool(pydicom_gdcm.HAVE_GDCM) and tuple(version) >= (3, 0, 10)


def decode_frame(src: bytes, runner: Any) -> bytes:
    """The stored values of one greyscale JPEG Extended frame (``runner``: pydicom's DecodeRunner)."""
    import gdcm

    if runner.samples_per_pixel != 1:
        raise NotImplementedError("the GDCM 12-bit JPEG plugin decodes greyscale images only")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    pixel_data = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    pixel_data.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(pixel_data)
    photometric = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    bits = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(1, runner.bits_allocated, bits, bits - 1, runner.pixel_representation))
    decoded: bytes = image.GetBuffer().encode("utf-8", "surrogateescape")  # python-gdcm returns bytes as str
    expected = runner.rows * runner.columns * (runner.bits_allocated // 8)
    if len(decoded) != expected:
        raise ValueError(f"GDCM returned {len(decoded)} bytes for a frame of {expected}")
    return decoded
