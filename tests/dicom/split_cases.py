"""Series that scanners put together under one SeriesInstanceUID, as part attributes, with the keys we expect."""

from __future__ import annotations

from typing import Any

M = ["ORIGINAL", "PRIMARY", "M", "ND"]


def siemens(b: int, g: tuple[float, float, float] | None) -> dict[Any, Any]:
    """Siemens private diffusion elements (CSA header block), as dcm2niix reads them."""
    d: dict[Any, Any] = {0x00190010: ("LO", "SIEMENS MR HEADER"), 0x0019100C: ("IS", str(b)), "Manufacturer": "SIEMENS"}
    if g is not None:
        d[0x0019100E] = ("FD", list(g))
    return d


def ge(b: int, g: tuple[float, float, float] | None) -> dict[Any, Any]:
    """GE private diffusion elements: b-value with GE's 1e9 offset, gradient in three DS elements."""
    d: dict[Any, Any] = {
        0x00430010: ("LO", "GEMS_PARM_01"),
        0x00431039: ("IS", [str(1_000_000_000 + b), "8", "0", "0"]),
        "Manufacturer": "GE MEDICAL SYSTEMS",
        0x00190010: ("LO", "GEMS_ACQU_01"),
    }
    for tag, v in zip((0x001910BB, 0x001910BC, 0x001910BD), g or (0, 0, 0), strict=True):
        d[tag] = ("DS", f"{v:g}")
    return d


def philips(b: int, g: tuple[float, float, float] | None) -> dict[Any, Any]:
    """Philips private diffusion elements: b-value (2001,1003) and the direction in (2005,10B0-B2), FL each, as
    classic (not enhanced) Philips DTI writes them and dcm2niix reads them."""
    d: dict[Any, Any] = {
        0x20010010: ("LO", "Philips Imaging DD 001"),
        0x20011003: ("FL", float(b)),
        0x20050010: ("LO", "Philips MR Imaging DD 001"),
        "Manufacturer": "Philips Medical Systems",
    }
    for tag, v in zip((0x200510B0, 0x200510B1, 0x200510B2), g or (0.0, 0.0, 0.0), strict=True):
        d[tag] = ("FL", float(v))
    return d


DIRS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.7071, 0.7071)]
CASES: dict[str, tuple[list[dict[Any, Any]], list[str]]] = {
    "echo": ([{"EchoNumbers": n, "EchoTime": f"{10 * n}"} for n in (1, 2, 3)], [".echo1", ".echo2", ".echo3"]),
    "magphase": ([{"ImageType": M}, {"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}], [".mag", ".phase"]),
    "temporal": (
        [{"TemporalPositionIdentifier": t, "NumberOfTemporalPositions": 4} for t in (1, 2, 3, 4)],
        [".t1", ".t2", ".t3", ".t4"],
    ),
    "trigger": ([{"TriggerTime": "0"}, {"TriggerTime": "350.5"}], [".trig1", ".trig2"]),
    "acquisition": ([{"AcquisitionNumber": 1}, {"AcquisitionNumber": 2}], [".acq1", ".acq2"]),
    "dti": (
        [{"DiffusionBValue": 0}] + [{"DiffusionBValue": 1000, "DiffusionGradientOrientation": list(g)} for g in DIRS],
        [".b0", ".b1000.dir1", ".b1000.dir2", ".b1000.dir3"],
    ),
    "dti_siemens": (
        [siemens(0, None)] + [siemens(1000, g) for g in DIRS],
        [".b0", ".b1000.dir1", ".b1000.dir2", ".b1000.dir3"],
    ),
    "dti_ge": ([ge(0, None)] + [ge(1000, g) for g in DIRS], [".b0", ".b1000.dir1", ".b1000.dir2", ".b1000.dir3"]),
    "dti_philips": (
        [philips(0, None)] + [philips(1000, g) for g in DIRS],
        [".b0", ".b1000.dir1", ".b1000.dir2", ".b1000.dir3"],
    ),
}
