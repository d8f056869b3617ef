"""DICOM in: our scan + loader against SimpleITK's ImageSeriesReader on the same files, and header scanning."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SERIES_SHAPE = (200, 512, 512)
COMPRESSED_SHAPE = (60, 512, 512)
TREE_SERIES, TREE_SLICES, TREE_IMAGE = 50, 100, (64, 64)
REPEATS = 5
REAL_TREES_VARIABLE = "INNEREYE_BENCH_REAL_TREES"
"""Folders of real scanner files (``os.pathsep``-separated) whose header scan is compared with the plain loop too:
the generated tree's headers are a few dozen elements, a scanner's hundreds. Unset: that comparison is left out
(CI cannot fetch such data; e.g. neurolabusc's dcm_qa_ge and dcm_qa_philips)."""


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    return _interleaved_medians({"only": function}, repeats)["only"]


def _interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn (A B A B ...) so that load from other processes on a
    shared machine falls on all of them alike; one warm-up run each (file cache, imports, thread pools)."""
    return {name: statistics.median(values) for name, values in _interleaved_times(functions, repeats).items()}


def _interleaved_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Every run's seconds of each function, run in turn after one warm-up run each."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return times


def _range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s"


def _simpleitk_names(folder: Path) -> list[str]:
    import SimpleITK as sitk

    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))


def _simpleitk_read(names: list[str]) -> Any:
    """The SimpleITK image (converting it to numpy would add a copy that our loader does not pay)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


def _without_layouts(series: Any) -> Any:
    """The series as if every file had changed since the scan: each one parsed again by pydicom to load."""
    import dataclasses

    slices = tuple(dataclasses.replace(ref, pixel=None) for ref in series.slices)
    return dataclasses.replace(series, slices=slices)


def _compare_load(folder: Path, label: str, repeats: int, *, native: bool) -> tuple[list[str], float]:
    """Markdown rows (folder to volume; slices already known; for a native series also slices known with
    every file parsed again) and SimpleITK's time over ours for the first (above 1: we are faster)."""
    import SimpleITK as sitk

    from innereye_batch.dicom.scan import scan_tree
    from innereye_batch.dicom.volume import load_volume

    (series,) = scan_tree(folder).series
    names = _simpleitk_names(folder)
    assert all(ref.pixel is not None for ref in series.slices) == native  # the path we mean to time
    expected = sitk.GetArrayFromImage(_simpleitk_read(names))
    np.testing.assert_array_equal(load_volume(series).array, expected)  # else timing means nothing
    np.testing.assert_array_equal(load_volume(_without_layouts(series)).array, expected)
    readers = {
        "ours": lambda: load_volume(scan_tree(folder).series[0]),
        "peer": lambda: _simpleitk_read(_simpleitk_names(folder)),
        "ours_load": lambda: load_volume(series),
        "peer_load": lambda: _simpleitk_read(names),
    }
    if native:
        reparsed = _without_layouts(series)
        readers["ours_reparse"] = lambda: load_volume(reparsed)
    medians = _interleaved_medians(readers, repeats)
    scopes = [("folder to volume", "ours", "peer"), ("slices known", "ours_load", "peer_load")]
    if native:
        scopes.append(("slices known, every file parsed again", "ours_reparse", "peer_load"))
    rows = [
        f"| {label}: {scope} | {medians[ours]:.3f} | {medians[peer]:.3f} | {medians[peer] / medians[ours]:.2f}x |"
        for scope, ours, peer in scopes
    ]
    return rows, medians["peer"] / medians["ours"]


def _pydicom_header_loop(root: Path) -> None:
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for folder, _, files in os.walk(root):
            for name in files:
                try:  # a real corpus holds files pydicom cannot read; the scan skips them with a reason
                    pydicom.dcmread(Path(folder) / name, stop_before_pixels=True)
                except Exception:
                    continue


def _real_trees(repeats: int) -> list[str]:
    """Per folder of ``REAL_TREES_VARIABLE``: the automatic scan, the scan in one process and the plain loop, in
    turn, medians and ranges; no lines when it is unset."""
    from innereye_batch.dicom.scan import scan_tree

    lines = []
    for folder in filter(None, os.environ.get(REAL_TREES_VARIABLE, "").split(os.pathsep)):
        root = Path(folder)
        files = sum(len(names) for _, _, names in os.walk(root))
        series = len(scan_tree(root).series)
        times = _interleaved_times(
            {
                "scan": lambda root=root: scan_tree(root),
                "one": lambda root=root: scan_tree(root, workers=1),
                "loop": lambda root=root: _pydicom_header_loop(root),
            },
            repeats,
        )
        scan, one, loop = (statistics.median(times[k]) for k in ("scan", "one", "loop"))
        lines.append(
            f"| {root.name} | {files:,} | {series} | {scan / files * 1e6:.0f} ({_range(times['scan'])}) | "
            f"{one / files * 1e6:.0f} ({_range(times['one'])}) | {loop / files * 1e6:.0f} ({_range(times['loop'])}) "
            f"| **{scan / loop:.2f}x** | {one / loop:.2f}x |"
        )
    if not lines:
        return []
    return [
        f"Real scanner files ({REAL_TREES_VARIABLE}), medians of {repeats} interleaved runs, µs per file (range of "
        "the whole tree's seconds); ratios are of the plain loop's time:",
        "",
        "| tree | files | series | scan, automatic | scan, one process | plain loop | automatic / loop | "
        "one process / loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
    ]


def run(repeats: int = REPEATS) -> str:
    """Generate the series in a temporary folder, time both readers in this process, return markdown."""
    from pydicom.uid import RLELossless

    from innereye_batch.dicom.scan import _process_count, scan_tree
    from tests.factory import recode_file, write_series

    rows = []
    with tempfile.TemporaryDirectory(prefix="innereye-bench-") as tmp:
        root = Path(tmp)
        write_series(root / "ct", shape=SERIES_SHAPE, spacing=(1.0, 0.7, 0.7), shuffle_names=True)
        z, y, x = SERIES_SHAPE
        found, uncompressed_ratio = _compare_load(
            root / "ct", f"CT {z}x{y}x{x} int16, uncompressed", repeats, native=True
        )
        rows.extend(found)
        truth = write_series(root / "rle", shape=COMPRESSED_SHAPE, spacing=(1.0, 0.7, 0.7), seed=1)
        for path in truth.paths:
            recode_file(path, RLELossless)
        z, y, x = COMPRESSED_SHAPE
        rows.extend(_compare_load(root / "rle", f"CT {z}x{y}x{x} int16, RLE Lossless", repeats, native=False)[0])

        tree = root / "tree"
        for index in range(TREE_SERIES):
            folder = tree / f"patient{index % 10:02d}" / f"series{index:03d}"
            write_series(folder, shape=(TREE_SLICES, *TREE_IMAGE), seed=index, shuffle_names=True)
        latin = root / "tree_latin1"  # the same tree as most scanners write it: SpecificCharacterSet ISO_IR 100
        for index in range(TREE_SERIES):
            folder = latin / f"patient{index % 10:02d}" / f"series{index:03d}"
            write_series(
                folder,
                shape=(TREE_SLICES, *TREE_IMAGE),
                seed=index,
                shuffle_names=True,
                edit=lambda k, ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 100"),
            )
        files = TREE_SERIES * TREE_SLICES
        for folder in (tree, latin):
            result = scan_tree(folder)
            assert len(result.series) == TREE_SERIES and not result.skipped
        tree_times = _interleaved_times(
            {
                "scan": lambda: scan_tree(tree),
                "scan_one": lambda: scan_tree(tree, workers=1),
                "loop": lambda: _pydicom_header_loop(tree),
                "scan_latin": lambda: scan_tree(latin),
                "loop_latin": lambda: _pydicom_header_loop(latin),
            },
            max(3, repeats // 2),
        )
        scan_seconds, scan_one_seconds, loop_seconds, latin_seconds, latin_loop_seconds = (
            statistics.median(tree_times[k]) for k in ("scan", "scan_one", "loop", "scan_latin", "loop_latin")
        )
        processes = _process_count(files, None)
    real = _real_trees(max(3, repeats // 2))

    cores = os.cpu_count()
    return "\n".join(
        [
            "## DICOM loading: `scan_tree` + `load_volume` vs SimpleITK ImageSeriesReader",
            "",
            f"Median of {repeats} warm runs in one process ({cores} CPU cores, shared with other work: the readers "
            "run in turn, A B A B, so that load from elsewhere falls on both alike). *Folder to volume*: ours is "
            "the header scan of the folder (`scan_tree`: pydicom `dcmread(stop_before_pixels=True, "
            "specific_tags=...)` per file) plus `load_volume`; SimpleITK's is `GetGDCMSeriesFileNames` plus "
            "`Execute`. *Slices known*: `load_volume` of an already scanned series against `Execute` with the "
            "file names already sorted. For an uncompressed little-endian single-frame image whose every "
            "allocated bit is stored, the scan records where pydicom located the Pixel Data value "
            "(`data_element_generator(defer_size=0)`), the bit layout, the rescale and the file's size and "
            "mtime; `load_volume` then checks size and mtime (`fstat`) and reads the values as they lie into an "
            "integer array (what pydicom's native decoder does), with no second parse. Any other file (compressed, "
            "big endian, multi-frame, unused high bits, or changed since the scan) is parsed again by pydicom and "
            "decoded by `pydicom.pixels.pixel_array` (the row *every file parsed again* times that path on the "
            "uncompressed series). Rescale goes into a preallocated float32 array. No "
            "hand-written DICOM reader. SimpleITK returns float32. Voxels are checked equal before timing. A "
            "speed-up below 1.00x means SimpleITK (GDCM, C++) is faster.",
            "",
            "| series | ours (s) | SimpleITK (s) | speed-up |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            *(
                [
                    f"Folder to volume on uncompressed CT, SimpleITK is faster ({1 / uncompressed_ratio:.2f}x our "
                    "time): pydicom parses every header in Python, where GDCM parses in C++. Most of our time "
                    "there is the scan.",
                    "",
                ]
                if uncompressed_ratio < 1.0
                else []
            ),
            f"Header scan of a {files:,}-file tree ({TREE_SERIES} series of {TREE_SLICES} slices "
            f"{TREE_IMAGE[0]}x{TREE_IMAGE[1]}, in per-patient folders): `scan_tree` {scan_seconds:.2f} s "
            f"({scan_seconds / files * 1e6:.0f} µs per file, grouping, sorting and checks included; "
            f"{processes} header-reading processes, automatic), {scan_one_seconds:.2f} s in this process alone "
            f"(`workers=1`, {scan_one_seconds / files * 1e6:.0f} µs per file); a plain single-threaded "
            f"`pydicom.dcmread(stop_before_pixels=True)` loop over the same files: {loop_seconds:.2f} s "
            f"({loop_seconds / files * 1e6:.0f} µs per file). Automatic scan / plain loop: "
            f"**{scan_seconds / loop_seconds:.2f}x** the loop's time (below 1: faster). Medians of "
            f"{len(tree_times['scan'])} interleaved runs; ranges: scan {_range(tree_times['scan'])}, alone "
            f"{_range(tree_times['scan_one'])}, loop {_range(tree_times['loop'])}.",
            "",
            f"The same tree with SpecificCharacterSet ISO_IR 100 in every file (what most scanners write): "
            f"`scan_tree` {latin_seconds:.2f} s, the plain loop {latin_loop_seconds:.2f} s, "
            f"**{latin_seconds / latin_loop_seconds:.2f}x** (ranges: scan {_range(tree_times['scan_latin'])}, "
            f"loop {_range(tree_times['loop_latin'])}).",
            "",
            *real,
        ]
    )
