"""InnerEye's published segmentation configs as inference blocks, chosen by model name when a folder has none.

Values read from microsoft/InnerEye-DeepLearning ``InnerEye/ML/configs/segmentation/``: ``ProstateBase.py`` and
``ProstatePaper.py``, ``HeadAndNeckBase.py`` and ``HeadAndNeckPaper.py``, ``Lung.py`` (final version: level -500,
window 2200, test crop (112, 512, 512)), with the base defaults of ``InnerEye/ML/config.py``
(``SegmentationModelBase``: ``num_downsampling_paths`` 4, CT-window output range (-1, 1)). A preset holds the
config class's *default* values: training-time overrides are not recorded in a model folder, so a model trained
with other structures or feature channels needs its own inference block. Every preset stitches patches by
uniform averaging (``average``), which is what InnerEye's own inference does.

HeadAndNeck carries ``HeadAndNeckBase``'s post-processing rules (``HeadAndNeckPaper`` sets the same ones): slice
exclusion brainstem above spinal_cord (cord dominates), spc_muscle above mpc_muscle (mpc dominates), optic_chiasm
above pituitary_gland (chiasm dominates); summed probability of (spinal_cord, brainstem), (mpc_muscle, spc_muscle)
and (optic_chiasm, pituitary_gland) against external. InnerEye adds each rule only when the model has its
structures (and external, for the summed ones), so they are marked ``if_present``: a folder whose older-form
``structure_names`` replace the preset's keeps those whose structures it has.
"""

from __future__ import annotations

import copy
import random
from typing import Any

PROSTATE_STRUCTURES = ["external", "femur_r", "femur_l", "rectum", "prostate", "bladder", "seminalvesicles"]
PROSTATE_FILL_HOLES = [True, True, True, True, True, False, True]
HEAD_AND_NECK_STRUCTURES = [
    "external", "parotid_l", "parotid_r", "smg_l", "smg_r", "spinal_cord", "brainstem", "globe_l", "globe_r",
    "mandible", "spc_muscle", "mpc_muscle", "cochlea_l", "cochlea_r", "lens_l", "lens_r", "optic_chiasm",
    "optic_nerve_l", "optic_nerve_r", "pituitary_gland", "lacrimal_gland_l", "lacrimal_gland_r",
]  # fmt: skip
LUNG_STRUCTURES = ["spinalcord", "lung_r", "lung_l", "heart", "esophagus"]


def _head_and_neck_colours(count: int) -> list[list[int]]:
    """InnerEye's colours for HeadAndNeck: three ``randint(0, 255)`` per structure from ``random.Random(0)``."""
    generator = random.Random(0)
    return [[generator.randint(0, 255) for _ in range(3)] for _ in range(count)]


def _ct_unet3d_block(
    *,
    structures: list[str],
    colours: list[list[int]],
    feature_channels: int,
    level: float,
    window: float,
    test_crop_size: list[int],
    stride: list[int],
    largest_component: list[str],
    fill_holes: list[str],
    smoothing: list[float] | None,
    summed_probability_rules: list[dict[str, Any]] | None = None,
    slice_exclusion_rules: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "version": 1,
        "task": "segmentation",
        "structures": [{"name": n, "colour": c} for n, c in zip(structures, colours, strict=True)],
        "architecture": {
            "name": "UNet3D",
            "initial_feature_channels": feature_channels,
            "kernel_size": 3,
            "num_downsampling_paths": 4,
        },
        "channels": [{"name": "ct", "modality": "CT"}],
        "normalisation": [{"method": "ct_window", "level": level, "window": window, "output_range": [-1.0, 1.0]}],
        "target_spacing": None,
        "patch_size": test_crop_size,
        "stride": stride,
        "stitching": "average",
        "postprocessing": {
            "posterior_smoothing_mm": smoothing,
            "largest_component": largest_component,
            "fill_holes": fill_holes,
            "summed_probability_rules": summed_probability_rules or [],
            "slice_exclusion_rules": slice_exclusion_rules or [],
        },
    }


def _summed_probability(first: str, second: str) -> dict[str, Any]:
    return {"first_class": first, "second_class": second, "external_class": "external", "if_present": True}


def _slice_exclusion(higher: str, lower: str, higher_dominates: bool) -> dict[str, Any]:
    return {"higher_class": higher, "lower_class": lower, "higher_dominates": higher_dominates, "if_present": True}


PRESETS: dict[str, dict[str, Any]] = {
    "ProstateBase": _ct_unet3d_block(
        structures=PROSTATE_STRUCTURES,
        colours=[[255, 0, 0]] * len(PROSTATE_STRUCTURES),
        feature_channels=32,
        level=50,
        window=600,
        test_crop_size=[128, 512, 512],
        stride=[64, 256, 256],
        largest_component=[s for s in PROSTATE_STRUCTURES if s != "seminalvesicles"],
        fill_holes=[s for s, fill in zip(PROSTATE_STRUCTURES, PROSTATE_FILL_HOLES, strict=True) if fill],
        smoothing=[2.0, 2.0, 3.0],
    ),
    "HeadAndNeckBase": _ct_unet3d_block(
        structures=HEAD_AND_NECK_STRUCTURES,
        colours=_head_and_neck_colours(len(HEAD_AND_NECK_STRUCTURES)),
        feature_channels=26,  # InnerEye: 32 for up to 20 structures, 26 above (22 here)
        level=50,
        window=600,
        test_crop_size=[144, 512, 512],
        stride=[72, 256, 256],
        largest_component=list(HEAD_AND_NECK_STRUCTURES),
        fill_holes=list(HEAD_AND_NECK_STRUCTURES),
        smoothing=None,
        summed_probability_rules=[
            _summed_probability("spinal_cord", "brainstem"),
            _summed_probability("mpc_muscle", "spc_muscle"),
            _summed_probability("optic_chiasm", "pituitary_gland"),
        ],
        slice_exclusion_rules=[
            _slice_exclusion("brainstem", "spinal_cord", False),
            _slice_exclusion("spc_muscle", "mpc_muscle", False),
            _slice_exclusion("optic_chiasm", "pituitary_gland", True),
        ],
    ),
    "Lung": _ct_unet3d_block(
        structures=LUNG_STRUCTURES,
        colours=[[255, 255, 255]] * len(LUNG_STRUCTURES),
        feature_channels=32,
        level=-500,
        window=2200,
        test_crop_size=[112, 512, 512],
        stride=[64, 256, 256],
        largest_component=["lung_l", "lung_r", "heart"],
        fill_holes=[],
        smoothing=None,
    ),
}

ALIASES: dict[str, str] = {"ProstatePaper": "ProstateBase", "HeadAndNeckPaper": "HeadAndNeckBase"}
"""InnerEye subclasses whose defaults equal a preset's."""

FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("HeadAndNeck", "HeadAndNeckBase"),
    ("Prostate", "ProstateBase"),
    ("Lung", "Lung"),
)
"""A user's subclass named like ``Prostate`` or ``HeadAndNeckMyHospital`` falls back to its family's preset."""


def _exact(name: str) -> str | None:
    lowered = name.lower()
    for key in (*PRESETS, *ALIASES):
        if key.lower() == lowered:
            return ALIASES.get(key, key)
    return None


def find_preset(model_name: str, model_configs_namespace: str = "") -> tuple[str, dict[str, Any]] | None:
    """The preset for a model, as ``(description, inference block)``, or None.

    Tried in order: the model name, then the last component of ``model_configs_namespace`` (exact, any case,
    including aliases like ``ProstatePaper``), then a family prefix of either (``Prostate...``,
    ``HeadAndNeck...``, ``Lung...``). The description says which rule matched.
    """
    candidates = [model_name]
    if model_configs_namespace:
        candidates.append(model_configs_namespace.rsplit(".", 1)[-1])
    for candidate in candidates:
        found = _exact(candidate)
        if found:
            return f"preset {found}", copy.deepcopy(PRESETS[found])
    for candidate in candidates:
        for prefix, preset in FAMILY_PREFIXES:
            if candidate.lower().startswith(prefix.lower()):
                description = f"preset {preset} (by name prefix {prefix!r} of {candidate!r})"
                return description, copy.deepcopy(PRESETS[preset])
    return None


def preset_names() -> list[str]:
    """Preset names and aliases that match exactly."""
    return sorted([*PRESETS, *ALIASES])
