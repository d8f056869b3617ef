"""The stable kinds of problem a scan reports for a series, what each means, and whether it stops loading.

Scripts and the pipeline match on these names (``Problem.kind``); they never change meaning. A *fatal* problem
stops ``load_volume``; the others are warnings that the JSON and the table show. Where a kind is fatal only in some
cases, the table says when.

==========================  =====  ============================================================================
kind                        fatal  meaning
==========================  =====  ============================================================================
unreadable_file             yes    a file of this series (its SeriesInstanceUID read, possibly from what was left
                                   of a cut header) cannot be read: truncated, empty of pixel data, corrupt, or
                                   its values not stored from bit 0 (HighBit other than BitsStored - 1)
unreadable_file_in_folder   yes    a file in this series' folder cannot be read and its series is unknown
                                   (empty, cut before its SeriesInstanceUID, corrupt): it may be one of its slices
possibly_incomplete         no     InstanceNumbers are contiguous but start above 1, or ImagesInAcquisition
                                   announces more images than were found: files may be missing at an edge
invalid_pixel_spacing       yes    a cross-sectional image whose PixelSpacing is missing, zero, negative or not
                                   finite (never read as 1 mm)
unknown_pixel_spacing       no     a projection image (CR, DX, MG, IO, PX, RG) with neither PixelSpacing nor
                                   ImagerPixelSpacing: its spacing is unknown (1 mm written, source "unknown")
unknown_slice_spacing       no     a single-slice cross-sectional stack with neither SpacingBetweenSlices nor
                                   SliceThickness: its z spacing is unknown (1 mm written, source "unknown")
no_position                 yes    cross-sectional images without a usable ImagePositionPatient (or per-frame
                                   Plane Position): they cannot be placed in 3-D
no_orientation              yes    cross-sectional images without ImageOrientationPatient (or per-frame Plane
                                   Orientation); outputs in patient space (NIfTI, DICOM-SEG) need it
invalid_orientation         yes    ImageOrientationPatient not made of two orthogonal unit vectors (the message
                                   gives the measured lengths or row.col)
images_without_geometry     yes    some images of this series could not be placed (split off as another key):
                                   they may be slices of this stack
no_frame_of_reference       no     FrameOfReferenceUID missing: DICOM-SEG and RTSTRUCT outputs need it, NIfTI
                                   does not (the pipeline decides per output)
uid_collision               no     images of another study, frame of reference or patient carry the same
                                   SeriesInstanceUID; they were split off into keys ``.studyN``/``.forN``/
                                   ``.patientN`` (the patient's ID is never shown)
invalid_rescale             yes    RescaleSlope zero or not finite, or RescaleIntercept not finite; or, in a
                                   cross-sectional image, a Modality LUT Sequence or RT dose's DoseGridScaling
                                   maps the stored values (volumes do not apply them: never loaded unmapped)
duplicate_positions         yes    two images of one stack share a position and nothing (echo, image type,
                                   temporal position, acquisition, diffusion) tells them apart
duplicate_instances         yes    files of one stack at different positions carry the same SOPInstanceUID:
                                   outputs that reference their source images (DICOM-SEG, RT Structure Set)
                                   could not tell them apart
missing_slices              yes    steps between slices that are (close to) whole multiples of the base step; or
                                   positions that every sibling volume (other echoes, time points, components)
                                   holds are missing from this one: an edge file lost
variable_spacing            yes*   steps between slices that are not multiples of one step (variable spacing by
                                   design, e.g. GE), or steps (uneven, or even each within 1 %) whose errors add up
                                   to put a slice over half a step off the regular grid from the first slice to
                                   the last: a regular grid would be wrong. *Not fatal when the scan or load is
                                   asked to regrid irregular stacks: the stack is then resampled
non_uniform_spacing         no     steps that differ from the base step by 1-10 %, every slice within half a step
                                   of the regular grid: the mean step (first slice to last) is used
gantry_tilt                 yes*   slices drift within their plane (tilted gantry, sheared stack): the measured
                                   angle is given. Not fatal under half a pixel (ignored) or when regridding
mixed_transfer_syntaxes     no     files of one stack use different transfer syntaxes
no_readable_images          yes    every file that carries this SeriesInstanceUID is damaged: the series is
                                   listed (a row in the summary) though nothing of it can be read; also the row
                                   ``unreadable.<hash>`` of damaged files whose series is unknown, in a folder
                                   of no series
unsupported_images          yes*   images of this SeriesInstanceUID that cannot be processed (colour, 1-bit):
                                   fatal when they are all the series has, else they are left out and said so
no_decoder                  yes    no installed decoder reads the files' transfer syntax (at their bit depth, for
                                   12-bit JPEG Extended): the message names the syntax and what to install
mosaic                      yes    a Siemens mosaic or UIH grid (one image holding a volume as tiles) whose slice
                                   count, grid, positions, slice normal or slice spacing are missing or
                                   inconsistent: it cannot be unpacked, and is never read as one 2-D slice
==========================  =====  ============================================================================
"""

from __future__ import annotations

UNREADABLE_FILE = "unreadable_file"
UNREADABLE_FILE_IN_FOLDER = "unreadable_file_in_folder"
POSSIBLY_INCOMPLETE = "possibly_incomplete"
INVALID_PIXEL_SPACING = "invalid_pixel_spacing"
UNKNOWN_PIXEL_SPACING = "unknown_pixel_spacing"
UNKNOWN_SLICE_SPACING = "unknown_slice_spacing"
NO_POSITION = "no_position"
NO_ORIENTATION = "no_orientation"
INVALID_ORIENTATION = "invalid_orientation"
IMAGES_WITHOUT_GEOMETRY = "images_without_geometry"
NO_FRAME_OF_REFERENCE = "no_frame_of_reference"
UID_COLLISION = "uid_collision"
INVALID_RESCALE = "invalid_rescale"
DUPLICATE_POSITIONS = "duplicate_positions"
DUPLICATE_INSTANCES = "duplicate_instances"
MISSING_SLICES = "missing_slices"
VARIABLE_SPACING = "variable_spacing"
NON_UNIFORM_SPACING = "non_uniform_spacing"
GANTRY_TILT = "gantry_tilt"
MIXED_TRANSFER_SYNTAXES = "mixed_transfer_syntaxes"
NO_READABLE_IMAGES = "no_readable_images"
UNSUPPORTED_IMAGES = "unsupported_images"
NO_DECODER = "no_decoder"
MOSAIC = "mosaic"

REGRIDDABLE = frozenset({VARIABLE_SPACING, GANTRY_TILT})
"""Kinds that resampling onto a regular orthogonal grid (``regrid.py``) resolves."""

OF_THE_READING = frozenset({UNREADABLE_FILE, UNREADABLE_FILE_IN_FOLDER, NO_READABLE_IMAGES, NO_DECODER})
"""Kinds that may come from this reading rather than from the files' content: an I/O error, a folder's
permissions, a decoder not installed here. The others follow from what the files hold."""

ALL_KINDS = frozenset(
    {
        UNREADABLE_FILE,
        UNREADABLE_FILE_IN_FOLDER,
        POSSIBLY_INCOMPLETE,
        INVALID_PIXEL_SPACING,
        UNKNOWN_PIXEL_SPACING,
        UNKNOWN_SLICE_SPACING,
        NO_POSITION,
        NO_ORIENTATION,
        INVALID_ORIENTATION,
        IMAGES_WITHOUT_GEOMETRY,
        NO_FRAME_OF_REFERENCE,
        UID_COLLISION,
        INVALID_RESCALE,
        DUPLICATE_POSITIONS,
        DUPLICATE_INSTANCES,
        MISSING_SLICES,
        VARIABLE_SPACING,
        NON_UNIFORM_SPACING,
        GANTRY_TILT,
        MIXED_TRANSFER_SYNTAXES,
        NO_READABLE_IMAGES,
        UNSUPPORTED_IMAGES,
        NO_DECODER,
        MOSAIC,
    }
)
