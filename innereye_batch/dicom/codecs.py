"""Which installed decoders can read a file's transfer syntax, asked of pydicom's decoder registry.

The scan calls ``decoder_problems`` for every file, before any pixel is decoded: a syntax that pydicom has no
decoder for, or whose plugins are all missing (or, for 12-bit JPEG Extended, limited to 8 bits), is a fatal
``no_decoder`` problem of the file's series that names the syntax and what to install, as pydicom lists it.
``register_decoders`` adds our GDCM plugin for 12-bit JPEG Extended (gdcm_jpeg12.py) to that registry.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from pydicom.pixels import get_decoder
from pydicom.uid import UID, AllTransferSyntaxes, JPEGExtended12Bit, UncompressedTransferSyntaxes

from innereye_batch.dicom.series import Problem

GDCM_JPEG12_PLUGIN = "gdcm-12bit"
"""Label of our plugin in pydicom's JPEG Extended decoder."""
EIGHT_BIT_ONLY_PLUGINS = {JPEGExtended12Bit: frozenset({"gdcm", "pillow"})}
"""Plugins that pydicom registers for a syntax but that decline samples of more than 8 bits. pydicom 3 says so
only when decoding (its GDCM and Pillow plugins raise NotImplementedError for JPEG Extended with BitsStored > 8),
not in its registry; tests/dicom/test_codecs.py checks that they still do."""

_PYDICOM_GDCM_PLUGIN = ("pydicom.pixels.decoders.gdcm", "_decode_frame")
"""Where pydicom's own registry finds its GDCM plugin."""
_lock = threading.Lock()
_registered = False


def register_decoders() -> None:
    """Set up pydicom's decoder registry once per process (thread-safe): GDCM last, our 12-bit plugin added.

    pydicom tries its plugins in order and GDCM comes first; with the optional python-gdcm installed, it is moved
    behind pylibjpeg and the others, so that installing it changes no decoded value, only reads what they fail
    to. Our GDCM plugin for 12-bit JPEG Extended (gdcm_jpeg12.py) comes last; pydicom lists it as available when
    python-gdcm is installed, else among the missing dependencies.
    """
    global _registered
    if _registered:  # the scan asks for every file: no lock once done
        return
    with _lock:
        if _registered:
            return
        for syntax in AllTransferSyntaxes:
            _move_gdcm_last(syntax)
        decoder = get_decoder(JPEGExtended12Bit)
        with contextlib.suppress(ValueError):  # ValueError: added already, by a caller that bypassed this function
            decoder.add_plugin(GDCM_JPEG12_PLUGIN, ("innereye_batch.dicom.gdcm_jpeg12", "decode_frame"))
        _registered = True


def _move_gdcm_last(syntax: str) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return
    plugins = decoder.available_plugins
    if "gdcm" not in plugins or len(plugins) == 1:
        return
    decoder.remove_plugin("gdcm")
    decoder.add_plugin("gdcm", _PYDICOM_GDCM_PLUGIN)


def decoder_problems(syntax: str, bits_stored: Any = None) -> tuple[Problem, ...]:
    """``()`` when an installed decoder can read pixel data in ``syntax`` with ``bits_stored`` bits; else one
    fatal ``no_decoder`` problem naming the syntax and what to install."""
    if syntax in UncompressedTransferSyntaxes:  # pydicom's native decoder: nothing to ask (the scan's common case)
        return ()
    register_decoders()
    uid = UID(syntax)
    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (Problem("no_decoder", f"{name}: pydicom has no pixel data decoder for this transfer syntax", True),)
    if decoder.is_native:
        return ()
    bits = _whole_number(bits_stored)
    limited = EIGHT_BIT_ONLY_PLUGINS.get(uid, frozenset()) if bits is None or bits > 8 else frozenset()
    available = decoder.available_plugins
    if any(plugin not in limited for plugin in available):
        return ()
    depth = f" with {bits if bits is not None else 'unknown'} bits stored" if limited else ""
    message = f"{name}{depth}: no installed decoder can read it"
    declined = [plugin for plugin in available if plugin in limited]
    if declined:
        message += f" (installed: {', '.join(declined)}, which decode 8-bit samples only)"
    installs = [line for line in decoder.missing_dependencies if line.split(" - ")[0] not in limited]
    message += "; install one of: " + "; ".join(installs) if installs else "; pydicom lists no plugin that could"
    return (Problem("no_decoder", message, True),)


def _whole_number(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
