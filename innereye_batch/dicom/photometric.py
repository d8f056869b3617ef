"""MONOCHROME1 images: which modalities are inverted on load, and how (exactly as SimpleITK / GDCM do).

MONOCHROME1 means "the lowest value is displayed white". What a model saw in training depends on the reader it
was trained through; SimpleITK (GDCM) inverts MONOCHROME1 stored values before the rescale. Our rule, one per
kind of modality:

- **Quantitative cross-sectional modalities (CT, PT, NM)**: never inverted. After the modality LUT their values
  are physical units (HU, Bq/ml, counts); a MONOCHROME1 flag only changes how they are displayed, and a model
  for these modalities is trained on the units. Here we deliberately differ from SimpleITK.
- **Other cross-sectional modalities (MR and the rest)**: inverted as SimpleITK does, since display convention
  is all their values carry and a model trained through SimpleITK saw them inverted. Unsigned stored values
  ``s`` with BitsStored ``n`` become ``(2**n - 1) - s``, signed ones ``-1 - s`` (the bitwise complement), and
  the rescale is applied after, as GDCM does; float pixel data is negated.
- **Projection images (CR, DX, MG, IO, PX, RG)**: not decided here (the 2-D loader for them handles it); the
  3-D loader keeps their stored values.

Whether a series was inverted is on ``SeriesInfo.inverts_monochrome1`` and ``Volume.inverted_monochrome1``.
"""

from __future__ import annotations

import numpy as np

QUANTITATIVE_MODALITIES = frozenset({"CT", "PT", "NM"})
"""Cross-sectional modalities whose rescaled values are physical units: MONOCHROME1 never inverts them."""
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG"})
"""Projection radiography: 2-D images, never placed in 3-D; handled by the 2-D loader."""


def inverts_monochrome1(modality: str) -> bool:
    """True where a MONOCHROME1 image of ``modality`` is inverted on load (see module docstring)."""
    modality = modality.upper()
    return modality not in QUANTITATIVE_MODALITIES and modality not in PROJECTION_MODALITIES


def invert_stored(stored: np.ndarray, bits_stored: int | None) -> np.ndarray:
    """MONOCHROME1 stored values as GDCM turns them into MONOCHROME2, before any rescale (a new array)."""
    if stored.dtype.kind == "f":
        return -stored.astype(np.float64)
    if stored.dtype.kind == "i":
        return -1 - stored.astype(np.int64)
    bits = bits_stored or stored.dtype.itemsize * 8
    return (1 << bits) - 1 - stored.astype(np.int64)
