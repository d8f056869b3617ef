"""Siemens and UIH mosaics: one 2-D image that holds a whole 3-D volume as tiles, unpacked into slices.

A Siemens mosaic (ImageType contains MOSAIC) stores N slices as tiles of a G x G grid, G = ceil(sqrt(N)), in
row-major order; N is NumberOfImagesInMosaic in the CSA image header (0029,xx10, read with nibabel's csareader)
or in (0019,xx0A). Its ImagePositionPatient is the corner of the whole mosaic, not of slice 1: slice 1 lies
(mosaic columns - tile columns) / 2 column spacings along the row direction and (mosaic rows - tile rows) / 2
row spacings along the column direction from it. Slices follow the CSA SliceNormalVector, which may point
along cross(row, column) or against it, one slice spacing apart (SpacingBetweenSlices, else SliceThickness).
A UIH grid (private "Image Private Header" (0065,xx50) NumberOfImagesInGrid) has ceil(sqrt(N)) columns and
ceil(N / columns) rows of tiles, and gives each tile's ImagePositionPatient in the items of (0065,xx51).
These are dcm2niix's rules (nii_dicom.cpp: nii_demosaic, set_nii_header_x).

The scan turns a mosaic file into one image per tile (frame = tile index, ``mosaic_size`` set), so that
stacks.py sorts and checks them like the frames of a multi-frame file; a series of several mosaic files (fMRI,
DTI) is split into one volume per file by splitting.py like any other repeats (``.acqN``, ``.tN``, ``.b1000.dir2``;
``.volN`` for files told apart only by InstanceNumber). The loader cuts the decoded mosaic into its tiles and the
DICOM-SEG writer lays a label map out as the mosaic again. A mosaic whose slice count, grid, positions, slice
direction or slice spacing are missing or inconsistent is refused: it keeps its one image, stands alone (never
stacked with others) and carries a fatal ``mosaic`` problem that says why.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag, Tag

from innereye_batch.dicom.headers import FileHeader, ImageHeader, plausible_spacing
from innereye_batch.dicom.problems import MOSAIC
from innereye_batch.dicom.series import Problem, SeriesInfo, SliceRef
from innereye_batch.errors import SeriesError

_SIEMENS_CSA = (0x0029, "SIEMENS CSA HEADER", 0x10)
"""Group, private creator and element offset of the CSA image header."""
_SIEMENS_MOSAIC_COUNT = (0x0019, "SIEMENS MR HEADER", 0x0A)
_UIH_GRID_COUNT = (0x0065, "Image Private Header", 0x50)
_UIH_TILE_ITEMS = (0x0065, "Image Private Header", 0x51)
_PRIVATE_BLOCKS = range(0x10, 0x14)
"""Private blocks searched for each creator (scanners use the first)."""


def _private_tags(*elements: tuple[int, str, int]) -> list[BaseTag]:
    """The private creator elements and the elements of ``elements``, in every block searched."""
    groups = sorted({group for group, _, _ in elements})
    return [Tag(group, block) for group in groups for block in _PRIVATE_BLOCKS] + [
        Tag(group, (block << 8) | offset) for group, _, offset in elements for block in _PRIVATE_BLOCKS
    ]


MOSAIC_TAGS: list[BaseTag] = [Tag("ImageType"), *_private_tags(_SIEMENS_MOSAIC_COUNT, _UIH_GRID_COUNT)]
"""Elements the scan reads from every file besides its own, to tell a mosaic: ImageType, (0019,xx0A) and
(0065,xx50) with their private creators."""
_MOSAIC_DETAIL_TAGS = _private_tags(_SIEMENS_CSA, _UIH_TILE_ITEMS)
"""Elements read again from a mosaic file only: the CSA header (10-20 kB) is in every Siemens image, and
parsing it for every file would slow every scan down."""
NORMAL_TOLERANCE = 1e-3
"""Largest difference between |SliceNormalVector . cross(row, column)| and 1 (about 2.6 degrees)."""


def unpack_mosaic(header: FileHeader, ds: Dataset) -> FileHeader:
    """A mosaic file's header with one image per tile (slice positions, tile size); other headers unchanged.

    ``ds`` is the file's header as the scan read it (``MOSAIC_TAGS`` included). A mosaic that cannot be unpacked
    keeps its one image, stands alone (a 2-D image of its own, like a projection image) and carries a fatal
    ``mosaic`` problem that says why.
    """
    if len(header.images) != 1 or header.images[0].frame is not None:
        return header  # multi-frame files are never mosaics
    image = header.images[0]
    grid_count = _private(ds, *_UIH_GRID_COUNT)
    if grid_count is None and not _siemens_flagged(ds) and (_siemens_tag_count(ds) or 0) <= 1:
        return header
    details = _mosaic_details(header.path)
    if grid_count is not None:
        vendor, outcome = "UIH", _uih_tiles(image, details, grid_count)
    else:
        vendor, outcome = "Siemens", _siemens(image, ds, details)
    if outcome is None:
        return header  # a "mosaic" of one slice is an ordinary image
    if isinstance(outcome, str):
        problem = Problem(MOSAIC, f"{vendor} mosaic {header.path.name}: {outcome}", True)
        return replace(header, is_projection=True, problems=(*header.problems, problem))
    return replace(header, images=tuple(outcome))


def tiles_as_frames(
    series: SeriesInfo, ref: SliceRef, header: dict[str, Any], pixels: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """For a tile of a mosaic (``ref``, one slice of the file decoded), the decoded mosaic cut into its tiles
    (row-major), as frames of the tile size.

    ``header`` (Rows and Columns among its values) and ``pixels`` are what the loader decoded from ``ref.path``;
    both are returned unchanged for an ordinary image. Raises SeriesError where the file no longer has the
    mosaic size the scan found.
    """
    if ref.mosaic_size is None:
        return header, pixels
    size = (int(header.get("Rows") or 0), int(header.get("Columns") or 0))
    if size != ref.mosaic_size:
        old = "x".join(map(str, ref.mosaic_size))
        found = "x".join(map(str, size))
        raise SeriesError(
            series.series_instance_uid, f"{ref.path}: mosaic size changed since the scan ({old} -> {found})"
        )
    frames = pixels.reshape(-1, *size)
    if frames.shape[0] != 1:
        raise SeriesError(series.series_instance_uid, f"{ref.path}: a mosaic holds one frame, this file {len(frames)}")
    rows, columns = series.geometry.shape[1:]
    grid = frames[0].reshape(size[0] // rows, rows, size[1] // columns, columns)
    return {**header, "Rows": rows, "Columns": columns}, grid.swapaxes(1, 2).reshape(-1, rows, columns)


def tiles_to_mosaic(volume: np.ndarray, series: SeriesInfo) -> np.ndarray:
    """The inverse of the loader's cut: a (z, y, x) array of a stack whose slices are the tiles of one mosaic
    file, laid out as that (rows, columns) mosaic image, each slice in its tile, unused tiles zero (e.g. to write
    a label map in the source's layout)."""
    mosaic_size = series.mosaic_size
    if mosaic_size is None or len(series.files) != 1:
        raise ValueError(f"series {series.key} is not the tiles of one mosaic file")
    if tuple(volume.shape) != series.geometry.shape:
        raise ValueError(f"array shape {volume.shape} does not match series shape {series.geometry.shape}")
    rows, columns = series.geometry.shape[1:]
    per_row = mosaic_size[1] // columns
    mosaic = np.zeros(mosaic_size, dtype=volume.dtype)
    for plane, ref in zip(volume, series.slices, strict=True):
        tile_row, tile_column = divmod(ref.frame or 0, per_row)
        mosaic[tile_row * rows : (tile_row + 1) * rows, tile_column * columns : (tile_column + 1) * columns] = plane
    return mosaic


_Tiles = list[ImageHeader]
_Outcome = _Tiles | str | None
"""Images of the tiles, the reason the mosaic is refused, or None for a one-slice "mosaic"."""


def _siemens_flagged(ds: Dataset) -> bool:
    """ImageType says MOSAIC."""
    element = ds.get_item(_IMAGE_TYPE)  # as read: converting (and validating) it for every file costs more
    image_type = element.value if element is not None else None
    if isinstance(image_type, bytes):
        image_type = image_type.decode("latin-1").split("\\")
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    return "MOSAIC" in (str(v).strip(" \x00").upper() for v in values)


_IMAGE_TYPE = Tag("ImageType")


def _siemens_tag_count(ds: Dataset) -> int | None:
    """NumberOfImagesInMosaic in (0019,xx0A), where present."""
    element = _private(ds, *_SIEMENS_MOSAIC_COUNT)
    return _integer(element.value) if element is not None else None


def _siemens(image: ImageHeader, ds: Dataset, details: Dataset) -> _Outcome:
    """The tiles (or the refusal) of a file flagged MOSAIC or with (0019,xx0A) > 1; ``ds`` as the scan read it,
    ``details`` the elements read again for mosaics."""
    flagged, from_tag = _siemens_flagged(ds), _siemens_tag_count(ds)
    csa, csa_error = _csa_header(details)
    from_csa = _integer(_csa_scalar(csa, "NumberOfImagesInMosaic"))
    if from_csa is not None and from_tag is not None and from_csa != from_tag:
        return f"NumberOfImagesInMosaic is {from_csa} in the CSA header but {from_tag} in (0019,100A)"
    count = from_csa if from_csa is not None else from_tag
    if not flagged:
        return f"NumberOfImagesInMosaic {count} but ImageType has no MOSAIC: not known to be a mosaic"
    if count is None:
        reason = f"CSA image header unreadable ({csa_error})" if csa_error else "no CSA image header or (0019,100A)"
        return f"ImageType MOSAIC without NumberOfImagesInMosaic ({reason})"
    if count < 1:
        return f"NumberOfImagesInMosaic is {count}"
    return _siemens_tiles(image, count, csa, csa_error)


def _siemens_tiles(image: ImageHeader, count: int, csa: dict | None, csa_error: str | None) -> _Outcome:
    """One image per slice of a Siemens mosaic, placed by dcm2niix's rule; or why it cannot be done."""
    if count == 1:
        return None
    if image.position is None:
        return f"ImagePositionPatient {image.position_issue}: its slices cannot be placed"
    if image.orientation is None:
        return f"ImageOrientationPatient {image.orientation_issue}: its slices cannot be placed"
    per_row = math.ceil(math.sqrt(count))
    layout = _tile_size(image, count, per_row, per_row)
    if isinstance(layout, str):
        return layout
    rows, columns = layout
    normal_vector = _floats(_csa_items(csa, "SliceNormalVector"), 3)
    if normal_vector is None or not np.linalg.norm(normal_vector):
        why = f"CSA image header unreadable ({csa_error})" if csa_error else "no SliceNormalVector in the CSA header"
        return f"{why}: the direction of its slices is unknown"
    row, col = np.asarray(image.orientation[:3]), np.asarray(image.orientation[3:])
    plane_normal = np.cross(row, col)
    cosine = float(np.dot(normal_vector / np.linalg.norm(normal_vector), plane_normal))
    if abs(abs(cosine) - 1.0) > NORMAL_TOLERANCE:
        angle = math.degrees(math.acos(min(1.0, abs(cosine))))
        shown = ", ".join(f"{v:.4g}" for v in normal_vector)
        return f"SliceNormalVector ({shown}) is {angle:.2f} degrees off the normal of ImageOrientationPatient"
    spacing = _slice_spacing(image)
    if spacing is None:
        return "no SpacingBetweenSlices or SliceThickness: the distance between its slices is unknown"
    row_spacing, column_spacing = image.pixel_spacing
    first = (
        np.asarray(image.position)
        + row * column_spacing * (image.columns - columns) / 2
        + col * row_spacing * (image.rows - rows) / 2
    )
    step = math.copysign(spacing, cosine) * plane_normal
    return [_tile(image, k, first + k * step, rows, columns) for k in range(count)]


def _uih_tiles(image: ImageHeader, details: Dataset, grid_count: DataElement) -> _Outcome:
    """One image per slice of a UIH grid, each at the position its (0065,xx51) item gives; or why not."""
    count = _integer(grid_count.value)
    if count is None or count < 1:
        return f"NumberOfImagesInGrid (0065,1050) is {grid_count.value!r}"
    if count == 1:
        return None
    if image.orientation is None:
        return f"ImageOrientationPatient {image.orientation_issue}: its slices cannot be placed"
    per_row = math.ceil(math.sqrt(count))
    layout = _tile_size(image, count, math.ceil(count / per_row), per_row)
    if isinstance(layout, str):
        return layout
    items = _sequence_items(_private(details, *_UIH_TILE_ITEMS))
    if len(items) != count:
        return f"(0065,1051) gives {len(items)} tile position(s) for NumberOfImagesInGrid {count}"
    positions = [_floats(item.get("ImagePositionPatient"), 3) for item in items]
    missing = [k + 1 for k, p in enumerate(positions) if p is None]
    if missing:
        return f"no usable ImagePositionPatient in (0065,1051) item(s) {', '.join(map(str, missing[:5]))}"
    return [_tile(image, k, np.asarray(p), *layout) for k, p in enumerate(positions)]


def _tile_size(image: ImageHeader, count: int, grid_rows: int, grid_columns: int) -> tuple[int, int] | str:
    """(rows, columns) of one tile when the mosaic divides evenly into the grid; else the reason."""
    if image.rows % grid_rows or image.columns % grid_columns:
        return (
            f"a {image.rows}x{image.columns} image does not divide into the {grid_rows}x{grid_columns} grid of "
            f"tiles that {count} slices need"
        )
    return image.rows // grid_rows, image.columns // grid_columns


def _tile(image: ImageHeader, index: int, position: np.ndarray, rows: int, columns: int) -> ImageHeader:
    """Tile ``index`` of the mosaic ``image``: a frame of the file, at ``position``."""
    x, y, z = (float(v) for v in position)
    return replace(
        image,
        frame=index,
        position=(x, y, z),
        position_issue=None,
        rows=rows,
        columns=columns,
        pixel=None,
        mosaic_size=(image.rows, image.columns),
    )


def _slice_spacing(image: ImageHeader) -> float | None:
    """SpacingBetweenSlices, else SliceThickness, as dcm2niix uses them for a mosaic; None when neither is a
    spacing (``headers.plausible_spacing``)."""
    for value in (image.slice_spacing, image.slice_thickness):
        if value is not None and plausible_spacing(value):
            return value
    return None


def _sequence_items(element: DataElement | None) -> list[Dataset]:
    """The items of a private sequence, also where pydicom read it as UN (an implicit VR file): the value of a
    sequence encoded as UN is in implicit VR little endian (PS3.5 6.2.2)."""
    if element is None:
        return []
    if element.VR == "SQ":
        return list(element.value)
    if not isinstance(element.value, bytes) or not element.value:
        return []
    try:
        return list(read_sequence(BytesIO(element.value), True, True, len(element.value), "iso8859"))
    except Exception:  # malformed items: no positions, and the mosaic is refused with that reason
        return []


def _mosaic_details(path: Path) -> Dataset:
    """The ``_MOSAIC_DETAIL_TAGS`` of a mosaic file (an empty dataset where the file cannot be read again)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_MOSAIC_DETAIL_TAGS, force=True)
    except Exception:  # the scan read this header a moment ago: a file changed since then lacks the details
        return Dataset()


def _private(ds: Dataset, group: int, creator: str, offset: int) -> DataElement | None:
    """The private element ``offset`` of ``creator``'s block in ``group``, wherever the block lies."""
    present = ds.keys()
    for block in _PRIVATE_BLOCKS:
        if (group << 16 | block) not in present:  # no creator there (a plain int: looked up without a BaseTag)
            continue
        owner = ds.get_item(_CREATOR_TAGS[group][block]) if group in _CREATOR_TAGS else ds.get((group, block))
        value = owner.value if owner is not None else None  # as read: the creator is compared as text below
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str) and value.strip(" \x00") == creator:
            return ds.get((group, (block << 8) | offset))
    return None


_CREATOR_TAGS = {
    group: {block: Tag(group, block) for block in _PRIVATE_BLOCKS}
    for group, _, _ in (_SIEMENS_MOSAIC_COUNT, _UIH_GRID_COUNT, _SIEMENS_CSA, _UIH_TILE_ITEMS)
}
"""The private creator tags searched, made once (every scanned file is asked for two of its groups)."""


def _csa_header(ds: Dataset) -> tuple[dict | None, str | None]:
    """The CSA image header parsed by nibabel, or None and why it could not be read (None when absent)."""
    element = _private(ds, *_SIEMENS_CSA)
    if element is None or not isinstance(element.value, bytes) or not element.value:
        return None, None
    try:
        return _csareader().read(element.value), None
    except Exception as error:  # any malformed header: the mosaic is refused with this reason
        return None, f"{type(error).__name__}: {error}"


@functools.cache
def _csareader() -> Any:
    """nibabel's CSA reader, imported on first use (nibabel takes a while to import and warns about it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The DICOM readers are highly experimental")
        from nibabel.nicom import csareader
    return csareader


def _csa_items(csa: dict | None, name: str) -> list[Any]:
    tag = (csa or {}).get("tags", {}).get(name)
    return list(tag.get("items") or []) if tag else []


def _csa_scalar(csa: dict | None, name: str) -> Any:
    items = _csa_items(csa, name)
    return items[0] if items else None


def _integer(value: Any) -> int | None:
    """A whole number from an IS, DS or US value (or the text of one read as UN); None otherwise."""
    if isinstance(value, bytes):
        value = value.decode("latin-1").strip(" \x00")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _floats(value: Any, count: int) -> np.ndarray | None:
    """``count`` finite numbers, or None."""
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None
