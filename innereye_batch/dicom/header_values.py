"""Header element values as the scan keeps them: each element converted once, plain values straight from their
bytes, anything else by pydicom.

Plain values (``plain_value``): text VRs in ASCII when the file's character set reads ASCII bytes as ASCII, IS and
DS (kept printing as written: ``_Integer``, ``_Decimal``), and binary integers and floats. pydicom converts the
rest, and a value it cannot convert is kept as its text, so that the problem it causes can name it.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import Tag

_CHARACTER_SET = int(Tag("SpecificCharacterSet"))
"""Converted by pydicom always: it decides how every other text is read."""


@functools.cache
def _keyword(number: int) -> str:
    """The element's keyword ("" for a private or unknown one)."""
    return pydicom.datadict.keyword_for_tag(number)


Fields = dict[Any, Any]
"""Top-level header values by keyword (private elements by tag number), converted by pydicom; absent and empty
elements left out."""


def header_fields(ds: Dataset) -> Fields:
    """Every element pydicom read (only the wanted tags), each converted once: plain text and number values
    straight from their bytes (``plain_value``), anything else by pydicom (from its raw form: the Dataset's own
    bookkeeping is not needed here); a value pydicom cannot convert is kept as its text, so that the problem it
    causes can name it."""
    fields: Fields = {}
    encoding = ds.original_character_set or default_encoding
    plain_text = ascii_reads_as_ascii(ds)
    little = ds.original_encoding[1] is not False
    for tag, raw in ds.items():  # the elements as read (iterating a Dataset would convert every one)
        if isinstance(raw, RawDataElement) and raw.value is None:
            raw = ds.get_item(tag)  # as get_item gives it: a deferred or valueless element converted by pydicom
        number = int(tag)  # plain int comparisons and look-ups: a BaseTag compares in Python
        found: Any = _NOT_PLAIN
        keyword = ""
        if isinstance(raw, RawDataElement) and number != _CHARACTER_SET and isinstance(raw.value, bytes):
            found = plain_value(raw.VR, raw.value, little, plain_text)
            if found is not _NOT_PLAIN:
                keyword = _keyword(number)
        if found is _NOT_PLAIN:
            try:
                if isinstance(raw, RawDataElement) and raw.VR != "SQ" and number != _CHARACTER_SET:
                    element = convert_raw_data_element(raw, encoding=encoding, ds=ds)
                else:
                    element = ds[tag]
                found = element.value
                keyword = element.keyword
            except Exception:  # an invalid value (e.g. DS "abc"): keep its text
                found = raw.value.decode("latin-1").strip("\x00 ") if isinstance(raw.value, bytes) else raw.value
                keyword = _keyword(number)
        if found is None or found == "":
            continue
        fields[keyword if keyword else number] = found
    return fields


_ASCII_SUPERSETS = frozenset(
    {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127"}
    | {"ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 203", "ISO_IR 192"}
)
"""Specific Character Sets without code extensions in which a byte below 128 is that ASCII character: the ISO 8859
parts, TIS 620 and UTF-8 (not ISO 2022 sets, whose escape sequences are ASCII bytes; not JIS X 0201, whose 0x5C
is the yen sign)."""


def ascii_reads_as_ascii(ds: Dataset) -> bool:
    """True when the file's Specific Character Set (one term, or none) reads a value made of ASCII bytes as ASCII:
    then ``plain_value`` may decode its text itself."""
    element = ds.get_item(_CHARACTER_SET)
    value = element.value if element is not None else b""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    terms = [str(term).strip(" \x00") for term in (value.split("\\") if isinstance(value, str) else value)]
    return len(terms) <= 1 and (terms[0] if terms else "") in _ASCII_SUPERSETS


class _AsWritten:
    """A DS or IS number that prints as the file wrote it (``0``, not ``0.0``), as pydicom's DSfloat and IS do."""

    __slots__ = ()
    text: str

    def __new__(cls, text: str) -> Any:
        number = super().__new__(cls, text)  # type: ignore[call-arg]  # float's or int's
        number.text = text  # type: ignore[misc]  # a slot of _Decimal; int subclasses have a __dict__
        return number

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


class _Decimal(_AsWritten, float):
    __slots__ = ("text",)


class _Integer(_AsWritten, int):
    pass  # int subclasses cannot have slots of their own


_NOT_PLAIN = object()
"""``plain_value``'s answer for a value it leaves to pydicom."""
_TEXT_VRS = frozenset({"UI", "CS", "SH", "LO", "AS", "DA", "TM"})
_TEXT_NUMBERS: dict[str | None, type[_AsWritten]] = {"IS": _Integer, "DS": _Decimal}
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_BINARY_NUMBERS: dict[tuple[str | None, bool], struct.Struct] = {
    (vr, little): struct.Struct(("<" if little else ">") + code)
    for vr, code in _NUMBER_FORMATS.items()
    for little in (True, False)
}
"""One value of each binary VR, by (VR, little endian)."""


def plain_value(vr: str | None, value: bytes, little: bool, plain_text: bool) -> Any:
    """The value of a plain element straight from its bytes, as pydicom converts it but without its per-value
    validation: text VRs (ASCII, split at backslashes, padding stripped), IS and DS as int and float, binary
    integers and floats; ``_NOT_PLAIN`` for anything else or anything unusual (pydicom then converts it)."""
    if vr in _TEXT_VRS or vr in _TEXT_NUMBERS:
        if not plain_text or not value.isascii():
            return _NOT_PLAIN
        text = value.decode("ascii")
        number = _TEXT_NUMBERS.get(vr)
        if "\\" not in text:  # one value (the common case): as below, without the lists
            part = text.strip(" \x00")
            if number is None:
                return part
            try:
                return number(part) if part else _NOT_PLAIN
            except ValueError:
                return _NOT_PLAIN
        parts = [part.strip(" \x00") for part in text.split("\\")]
        if number is None:
            return parts
        try:
            numbers = [number(p) for p in parts if p]
        except ValueError:
            return _NOT_PLAIN
        return numbers if len(numbers) == len(parts) else _NOT_PLAIN
    one = _BINARY_NUMBERS.get((vr, little))
    if one is None:
        return _NOT_PLAIN
    if len(value) == one.size:
        return one.unpack(value)[0]
    if not value or len(value) % one.size:
        return _NOT_PLAIN
    return list(struct.unpack(("<" if little else ">") + _NUMBER_FORMATS[vr or ""] * (len(value) // one.size), value))
