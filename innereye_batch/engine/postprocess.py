"""Post-processing of posteriors into a label map, in InnerEye's order: smoothing, argmax, summed-probability rules,
largest component, slice-exclusion rules, holes.

Matches InnerEye's ``InferencePipeline.post_process`` and ``image_util``:
- posterior smoothing (``gaussian_smooth_posteriors``): every class volume is filtered by
  ``scipy.ndimage.gaussian_filter`` with sigma = posterior_smoothing_mm / spacing, element-wise in (z, y, x)
  order (InnerEye passes both as (Z, Y, X)); SciPy's defaults (reflect at borders, truncate at 4 sigma);
- argmax over classes (first class wins ties);
- summed-probability rules (``apply_summed_probability_rules``), in their list's order, each on the labels the
  previous one left: a voxel labelled ``external_class`` whose posterior for it is strictly below the sum of those
  of ``first_class`` and ``second_class`` takes ``first_class`` where its posterior is >= ``second_class``'s, else
  ``second_class``. Voxel-wise, so slabs of posteriors give the labels of the whole volume;
- largest connected component (``extract_largest_foreground_connected_component``): ``scipy.ndimage.label``
  with its default structure, i.e. 6-connectivity (faces only) in 3-D; voxels of smaller components become
  background (0); ties between equal components keep the lowest-numbered one;
- slice-exclusion rules (``apply_slice_exclusion_rules``), in order, on the label map: slices are planes across
  the head-foot axis, "higher" nearer the head (InnerEye takes axis 0 of its images, whose index grows towards
  the head; here the array axis nearest head-foot, reversed for a series stored feet first: ``feet_to_head``).
  When both structures are present and the lowest slice holding ``higher_class`` is at or below the highest slice
  holding ``lower_class``, every voxel in those slices (both included) of the dominated structure becomes the
  dominant one (``higher_class`` when ``higher_dominates``, else ``lower_class``); nothing otherwise;
- hole filling: InnerEye fills holes only when drawing RT-struct contours; here each configured structure's
  mask is filled in 3-D (``binary_fill_holes``, 6-connected background), and only background voxels are
  relabelled, so a structure enclosed by another keeps its own label.

``refine_labels`` labels the components of every largest-component structure in one pass
(``connected_components``: cc3d or scikit-image on the label map, equal neighbouring values connected) and fills
each structure's holes within the bounding box of its voxels (``boxes.label_boxes``); the result is that
of one whole-volume pass per structure: every voxel of a structure lies in its box, the order of components (ties)
is their first voxel's raster order, and background touching the box's border reaches the volume's border
outside the box, where the structure has no voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from innereye_batch.model.spec import PostProcessing

if TYPE_CHECKING:
    import numpy as np
    import torch

Array = TypeVar("Array", "np.ndarray", "torch.Tensor")


def postprocess(
    posteriors: torch.Tensor | np.ndarray,
    spacing: tuple[float, float, float],
    spec: PostProcessing,
    structure_names: Sequence[str],
) -> np.ndarray:
    """uint8 label map (Z, Y, X) from posteriors (K, Z, Y, X): 0 background, i the i-th structure (K = n + 1).

    ``posterior_labels`` (on the posteriors' device) then ``refine_labels`` (on the CPU).
    """
    return refine_labels(posterior_labels(posteriors, spacing, spec, structure_names), spec, structure_names)


def posterior_labels(
    posteriors: torch.Tensor | np.ndarray,
    spacing: tuple[float, float, float],
    spec: PostProcessing,
    structure_names: Sequence[str],
) -> np.ndarray:
    """The first steps, where the posteriors are: smoothing when configured, argmax, then the summed-probability
    rules on the (smoothed) posteriors; only the uint8 label map leaves the device."""
    import numpy as np

    if len(posteriors.shape) != 4:
        raise ValueError(f"posteriors must be (classes, Z, Y, X), got shape {tuple(posteriors.shape)}")
    if posteriors.shape[0] != len(structure_names) + 1:
        raise ValueError(
            f"posteriors have {posteriors.shape[0]} classes but {len(structure_names)} structures + background"
        )
    if spec.posterior_smoothing_mm is not None and any(spec.posterior_smoothing_mm):
        posteriors = smooth_posteriors(posteriors, spec.posterior_smoothing_mm, spacing)
    names = structure_names
    rules = [
        (_label_of(r.first_class, names), _label_of(r.second_class, names), _label_of(r.external_class, names))
        for r in spec.summed_probability_rules
    ]
    if not rules:
        return argmax_labels(posteriors)
    if isinstance(posteriors, np.ndarray):
        return apply_summed_probability_rules(posteriors, argmax_labels(posteriors), rules)
    labels = apply_summed_probability_rules(posteriors, posteriors.argmax(dim=0).to(dtype=_uint8()), rules)
    return labels.cpu().numpy()


def apply_summed_probability_rules(posteriors: Array, labels: Array, rules: Sequence[tuple[int, int, int]]) -> Array:
    """In place: each rule ``(first, second, external)`` in turn relabels the voxels of ``labels`` (Z, Y, X) that
    hold ``external`` and whose posterior for it (of (K, Z, Y, X) ``posteriors``, numpy or torch alike) is below the
    sum of ``first``'s and ``second``'s: ``first`` where its posterior is >= ``second``'s, else ``second``."""
    for first, second, external in rules:
        p_first, p_second = posteriors[first], posteriors[second]
        replace = (labels == external) & (posteriors[external] < p_first + p_second)
        labels[replace & (p_first >= p_second)] = first
        labels[replace & (p_first < p_second)] = second
    return labels


def apply_slice_exclusion_rules(labels: np.ndarray, rules: Sequence[tuple[int, int, bool]]) -> np.ndarray:
    """In place: each rule ``(higher, lower, higher_dominates)`` in turn, where the slices (axis 0, its index
    growing towards the head: see ``feet_to_head``) from the lowest holding ``higher`` to the highest holding
    ``lower`` exist (both present, overlapping), relabels the dominated label's voxels in them as the dominant
    one. Returns labels."""
    from innereye_batch.boxes import label_boxes

    for higher, lower, higher_dominates in rules:
        boxes = label_boxes(labels, max(higher, lower))
        higher_box, lower_box = boxes[higher - 1], boxes[lower - 1]
        if higher_box is None or lower_box is None:
            continue
        first, last = higher_box[0].start, lower_box[0].stop - 1
        if first > last:
            continue
        dominant, dominated = (higher, lower) if higher_dominates else (lower, higher)
        overlap = labels[first : last + 1]
        overlap[overlap == dominated] = dominant
    return labels


def feet_to_head(labels: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """A view of a (z, y, x) label map whose axis 0 runs from the feet to the head: the array axis given the
    head-foot axis (``geometry.nearest_patient_axes``, as ``Geometry.axis_codes`` names it and a model stating an
    orientation is turned by), reversed when its index grows towards the feet.

    InnerEye's slice-exclusion rules assume axis 0 grows towards the head; a series scanned or stored feet first
    has it the other way (its slices sorted along a normal pointing to the feet), and a sagittal or coronal one
    has its slices across another axis."""
    import numpy as np

    from innereye_batch.dicom.geometry import nearest_patient_axes

    index_axis = nearest_patient_axes(direction).index(2)  # the index axis (x, y, z) given S-I
    view = np.moveaxis(labels, 2 - index_axis, 0)
    return view if float(np.asarray(direction)[2, index_axis]) > 0 else view[::-1]  # LPS: +z is superior


def resampled_labels(
    posteriors: torch.Tensor,
    shape: Sequence[int],
    spacing_from: tuple[float, float, float],
    spacing_to: tuple[float, float, float],
    spec: PostProcessing,
    structure_names: Sequence[str],
) -> np.ndarray:
    """``posterior_labels`` of the posteriors resampled (trilinear) from the model's grid onto the source grid of
    ``shape``: without smoothing, one slab of slices at a time (``preprocess.resample_slabs``, the same labels),
    so that the posteriors at the source's resolution are never held whole (2.6 GiB for 9 classes on a
    300x512x512 CT, and as much again for the resampling's temporaries). The summed-probability rules are
    voxel-wise: applied slab by slab, they give the whole volume's labels."""
    import numpy as np

    from innereye_batch.engine.preprocess import resample_slabs, resample_to_shape

    if spec.posterior_smoothing_mm is not None and any(spec.posterior_smoothing_mm):  # smoothing needs it whole
        whole = resample_to_shape(posteriors, shape, spacing_from, spacing_to, mode="trilinear")
        return posterior_labels(whole, spacing_to, spec, structure_names)
    labels = np.empty(tuple(shape), np.uint8)
    for start, slab in resample_slabs(posteriors, shape, spacing_from, spacing_to):
        part = posterior_labels(slab, spacing_to, spec, structure_names)
        labels[start : start + part.shape[0]] = part
    return labels


def refine_labels(
    labels: np.ndarray, spec: PostProcessing, structure_names: Sequence[str], direction: np.ndarray | None = None
) -> np.ndarray:
    """In place, on the CPU: largest connected component, slice-exclusion rules, then hole filling, of the
    configured structures. ``direction`` (the grid's 3x3 direction matrix, ``Geometry.direction_matrix``) says
    which way is up for the slice-exclusion rules (``feet_to_head``); None: array axis 0, its index growing
    towards the head."""
    from innereye_batch.boxes import label_boxes, nonzero_box

    largest = [_label_of(name, structure_names) for name in spec.largest_component]
    filled = [_label_of(name, structure_names) for name in spec.fill_holes]
    if largest:
        occupied = nonzero_box(labels)
        if occupied is not None:  # every voxel of these structures lies in the box of all non-zero voxels
            keep_largest_components(labels[occupied], largest)
    exclusions = [
        (_label_of(r.higher_class, structure_names), _label_of(r.lower_class, structure_names), r.higher_dominates)
        for r in spec.slice_exclusion_rules
    ]
    if exclusions:
        apply_slice_exclusion_rules(labels if direction is None else feet_to_head(labels, direction), exclusions)
    if filled:
        boxes = label_boxes(labels, max(filled))  # after the largest components: tighter boxes
        for label in filled:
            box = boxes[label - 1]  # fill_holes only adds this label, inside its own box: other boxes still hold
            if box is not None:
                fill_holes(labels[box], label)
    return labels


def argmax_labels(posteriors: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (Z, Y, X) index of the most probable class of (K, Z, Y, X) posteriors (first class on ties)."""
    import numpy as np

    if posteriors.shape[0] > 256:
        raise ValueError(f"{posteriors.shape[0]} classes do not fit a uint8 label map")
    if isinstance(posteriors, np.ndarray):
        return np.argmax(posteriors, axis=0).astype(np.uint8)
    return posteriors.argmax(dim=0).to(dtype=_uint8()).cpu().numpy()


def smooth_posteriors(
    posteriors: torch.Tensor | np.ndarray,
    smoothing_mm: Sequence[float],
    spacing: Sequence[float],
) -> np.ndarray:
    """Each class volume Gaussian-filtered with sigma = smoothing_mm / spacing voxels per (z, y, x) axis."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    if len(smoothing_mm) != 3 or len(spacing) != 3:
        raise ValueError(f"smoothing {smoothing_mm} and spacing {spacing} must be (z, y, x) triples")
    if any(s < 0 for s in smoothing_mm):
        raise ValueError(f"posterior smoothing must be >= 0 mm per axis, got {smoothing_mm}")
    sigma = np.asarray(smoothing_mm, dtype=np.float64) / np.asarray(spacing, dtype=np.float64)
    array = _to_numpy(posteriors)
    return np.stack([gaussian_filter(volume, sigma=sigma) for volume in array], axis=0)


def keep_largest_components(labels: np.ndarray, numbers: Sequence[int]) -> np.ndarray:
    """In place: voxels of each label of ``numbers`` outside that label's largest 6-connected component become
    background; ties keep the component whose first voxel comes first in (z, y, x) raster order (the lowest-numbered
    of ``scipy.ndimage.label``). One labelling for all of them. Returns labels."""
    import numpy as np

    wanted = sorted({int(n) for n in numbers} - {0})
    highest = int(labels.max(initial=0))
    # every label present wanted (the usual case): one comparison instead of a search per voxel
    everything = set(range(1, highest + 1)) <= set(wanted)
    selected = labels != 0 if everything else np.isin(labels, wanted)
    values = labels[selected]  # raster order
    if values.size == 0:
        return labels
    # other structures' voxels become background for the labelling; equal neighbours connect (6-connectivity)
    source = labels if everything or values.size == np.count_nonzero(labels) else np.where(selected, labels, 0)
    ids = connected_components(source)[selected]
    sizes = np.bincount(ids)
    owners = np.zeros(sizes.size, dtype=labels.dtype)
    owners[ids] = values
    present = np.flatnonzero(sizes)
    largest = np.zeros(int(owners.max()) + 1, dtype=np.int64)  # per label: the size of its largest component
    np.maximum.at(largest, owners[present], sizes[present])
    candidates = present[sizes[present] == largest[owners[present]]]
    # Only a label whose largest size several components share needs their first voxels (in raster order): those
    # are found among the tied components' voxels alone, not by sorting every voxel's id
    first = np.zeros(sizes.size, dtype=np.int64)
    tied = candidates[np.bincount(owners[candidates])[owners[candidates]] > 1]
    if tied.size:
        at = np.flatnonzero(np.isin(ids, tied))
        tied_ids, first_of = np.unique(ids[at], return_index=True)
        first[tied_ids] = at[first_of]
    order = np.lexsort((first[candidates], owners[candidates]))  # per label: the first of its largest
    ranked = owners[candidates][order]
    keep = np.zeros(sizes.size, dtype=bool)
    keep[candidates[order][np.r_[True, ranked[1:] != ranked[:-1]]]] = True
    dropped = ~keep[ids]
    if dropped.any():
        values[dropped] = 0
        labels[selected] = values
    return labels


def connected_components(labels: np.ndarray) -> np.ndarray:
    """Ids of the 6-connected components of a label map (neighbours of equal non-zero value connect; 0 is
    background): 0 on background, 1.. on components, in any order.

    ``cc3d`` (the ``fast`` extra) when installed: 7-10x faster than scikit-image on a 300x512x512 map, and its ids
    are 32-bit where scikit-image's are 64-bit. Callers order components by their own rule (``first`` voxel), so
    the two numberings give the same result."""
    import numpy as np

    try:
        if labels.size >= 2**32:
            raise ImportError("32-bit ids cannot number every voxel")
        import cc3d
    except ImportError:
        from skimage.measure import label

        return np.asarray(label(labels, background=0, connectivity=1))
    # cc3d 4.1 mislabels some strided views (a box of one column across slices) and reads past them: it gets a
    # C-ordered copy, never a view
    return np.asarray(cc3d.connected_components(np.ascontiguousarray(labels), connectivity=6, out_dtype=np.uint32))


def fill_holes(labels: np.ndarray, label: int) -> np.ndarray:
    """In place: background voxels enclosed (in 3-D) by ``label``'s mask are set to ``label``. Returns labels.

    As ``binary_fill_holes``: the 6-connected regions outside the mask that do not reach the array's border are
    holes; one labelling of those regions instead of its dilation to convergence.
    """
    import numpy as np
    from scipy.ndimage import label as connected_components

    mask = labels == label
    if not mask.any():
        return labels
    outside, count = connected_components(~mask)
    reaches_border = np.zeros(count + 1, dtype=bool)
    reaches_border[0] = True  # the mask itself
    for axis in range(outside.ndim):
        reaches_border[np.take(outside, [0, -1], axis=axis)] = True
    holes = ~reaches_border[outside]
    labels[holes & (labels == 0)] = label
    return labels


def _label_of(name: str, structure_names: Sequence[str]) -> int:
    try:
        return list(structure_names).index(name) + 1
    except ValueError:
        raise ValueError(f"post-processing names structure {name!r}, not one of {list(structure_names)}") from None


def _to_numpy(posteriors: Any) -> np.ndarray:
    import numpy as np

    if isinstance(posteriors, np.ndarray):
        return posteriors.astype(np.float32, copy=False)
    return posteriors.detach().float().cpu().numpy()


def _uint8() -> torch.dtype:
    import torch

    return torch.uint8
