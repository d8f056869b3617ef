"""`innereye-batch inspect`: describe a model folder as a JSON-ready dict and render it for people."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innereye_batch.errors import InnerEyeBatchError

if TYPE_CHECKING:
    from rich.console import Console

    from innereye_batch.model.classification import ClassificationSpec
    from innereye_batch.model.spec import ModelPackage, Normalisation, SegmentationSpec


_NORMALISATION_KEYS = {
    "ct_window": ("level", "window", "output_range"),
    "mri_window": ("sharpen", "tail", "output_range"),
    "zscore": (),
    "none": (),
}


def _describe_normalisation(normalisation: Normalisation) -> dict[str, Any]:
    values = asdict(normalisation)
    described: dict[str, Any] = {"method": normalisation.method}
    for key in _NORMALISATION_KEYS[normalisation.method]:
        described[key] = list(values[key]) if isinstance(values[key], tuple) else values[key]
    return described


def _describe_segmentation(spec: SegmentationSpec) -> dict[str, Any]:
    inference = spec.inference
    return {
        "structures": [
            {"label": i + 1, "name": s.name, "colour": list(s.colour)} for i, s in enumerate(spec.structures)
        ],
        "expected_input": {
            "normalisation": [_describe_normalisation(n) for n in spec.normalisation],
            "target_spacing": list(spec.target_spacing) if spec.target_spacing else None,
            "patch_size": list(inference.patch_size) if inference.patch_size else None,
            "stride": list(inference.stride) if inference.stride else None,
            "stitching": inference.stitching,
            "size_multiple": list(inference.size_multiple),
            "orientation": spec.orientation,
            "other_orientations": None if spec.orientation is None else ("reoriented" if spec.reorient else "refused"),
        },
        "postprocessing": {
            "activation": spec.activation,
            "posterior_smoothing_mm": list(spec.postprocessing.posterior_smoothing_mm or []) or None,
            "largest_component": list(spec.postprocessing.largest_component),
            "fill_holes": list(spec.postprocessing.fill_holes),
            "summed_probability_rules": [vars(r) for r in spec.postprocessing.summed_probability_rules],
            "slice_exclusion_rules": [vars(r) for r in spec.postprocessing.slice_exclusion_rules],
        },
    }


def _describe_classification(spec: ClassificationSpec) -> dict[str, Any]:
    thresholds = spec.thresholds or (None,) * len(spec.classes)
    return {
        "classes": [
            {"index": i, "name": name, "threshold": t}
            for i, (name, t) in enumerate(zip(spec.classes, thresholds, strict=True))
        ],
        "activation": spec.activation,
        "expected_input": {
            "modalities": list(spec.modalities),
            "input_size": list(spec.input_size),
            "input_channels": spec.input_channels,
            "intensity": {
                "apply_voi": spec.intensity.apply_voi,
                "png_scaling": spec.intensity.png_scaling,
                "mean": list(spec.intensity.mean),
                "std": list(spec.intensity.std),
            },
        },
        "gradcam_layer": spec.gradcam_layer,
    }


def _describe_package(package: ModelPackage) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": package.name,
        "task": package.task,
        "source": package.source,
        "model_configs_namespace": package.model_configs_namespace,
        "architecture": {"name": package.architecture.name, "params": dict(package.architecture.params)},
    }
    if package.task == "classification":
        task_part = _describe_classification(package.classification)
    else:
        task_part = _describe_segmentation(package.segmentation)
    described.update(task_part)
    described["expected_input"] = {"channels": [asdict(c) for c in package.channels], **task_part["expected_input"]}
    described["checkpoints"] = [
        {"path": str(c.path.relative_to(package.folder)), "size_bytes": c.size_bytes, "sha256": c.sha256}
        for c in package.checkpoints
    ]
    described["fingerprint"] = package.fingerprint()
    return described


def inspect_model(folder: Path, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Everything known about a model folder; ``loadable`` False and ``error`` set when it cannot be used."""
    from innereye_batch.model.checkpoints import load_checkpoint, load_networks
    from innereye_batch.model.package import load_model_package

    report: dict[str, Any] = {"folder": str(folder), "loadable": False}
    try:
        package = load_model_package(folder)
        report.update(_describe_package(package))
        for entry, ref in zip(report["checkpoints"], package.checkpoints, strict=True):
            loaded = load_checkpoint(ref.path, trust_checkpoint=trust_checkpoint)
            entry["format"] = loaded.format
            entry["mean_teacher"] = loaded.mean_teacher  # a legacy checkpoint's mean teacher's weights are used
        networks = load_networks(package, trust_checkpoint=trust_checkpoint)
        report["parameter_count"] = sum(p.numel() for p in networks[0].parameters())
        report["ensemble_size"] = len(networks)
        report["loadable"] = True
    except InnerEyeBatchError as error:
        report["error"] = str(error)
    return report


def render_inspect(report: dict[str, Any], console: Console) -> None:
    """Print a report from ``inspect_model`` as text."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]Model folder[/bold] {escape(report['folder'])}")
    if "name" in report:
        console.print(
            f"name: {escape(report['name'])}   task: {report['task']}   settings from: {escape(report['source'])}"
        )
        if report["task"] == "classification":
            _render_classification(report, console)
        else:
            _render_segmentation(report, console)
        checkpoints = Table("checkpoint", "format", "size", "sha256", title="Checkpoints")
        for c in report["checkpoints"]:
            kind = c.get("format", "?") + (" (mean teacher's weights)" if c.get("mean_teacher") else "")
            checkpoints.add_row(escape(c["path"]), kind, f"{c['size_bytes']:,}", c["sha256"])
        console.print(checkpoints)
    if report["loadable"]:
        console.print("[green]verdict: loadable[/green]")
    else:
        console.print(f"[red]verdict: cannot load:[/red] {escape(report.get('error', 'unknown error'))}")


def _render_architecture(report: dict[str, Any], console: Console) -> None:
    from rich.markup import escape

    arch = report["architecture"]
    params = ", ".join(f"{k}={v}" for k, v in arch["params"].items())
    count = report.get("parameter_count")
    console.print(f"architecture: {arch['name']}({escape(params)})" + (f"   parameters: {count:,}" if count else ""))


def _render_classification(report: dict[str, Any], console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("index", "class", "threshold", title=f"Classes ({report['activation']})")
    for c in report["classes"]:
        table.add_row(str(c["index"]), escape(c["name"]), "" if c["threshold"] is None else f"{c['threshold']:g}")
    console.print(table)
    _render_architecture(report, console)
    expected = report["expected_input"]
    console.print(
        f"input: {', '.join(expected['modalities'])} images, {expected['input_size'][0]} x {expected['input_size'][1]}"
        f", {expected['input_channels']} channel(s); intensity {expected['intensity']}; "
        f"Grad-CAM layer: {escape(str(report['gradcam_layer']))}"
    )


def _render_segmentation(report: dict[str, Any], console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("label", "structure", "colour", title="Structures")
    for s in report["structures"]:
        r, g, b = s["colour"]
        table.add_row(str(s["label"]), escape(s["name"]), f"[rgb({r},{g},{b})]■[/] ({r}, {g}, {b})")
    console.print(table)
    _render_architecture(report, console)
    expected = report["expected_input"]
    for channel, norm in zip(expected["channels"], expected["normalisation"], strict=True):
        console.print(f"input channel {escape(channel['name'])} (modality {channel['modality']}): {norm}")
    console.print(
        f"spacing: {expected['target_spacing'] or 'native grid'}   "
        f"patch: {expected['patch_size'] or 'whole volume'}   stride: {expected['stride']}   "
        f"stitching: {expected['stitching']}   "
        f"size multiple: {expected['size_multiple']}"
    )
    if expected["orientation"]:
        console.print(
            f"orientation: {expected['orientation']} (series whose axes run elsewhere are "
            f"{expected['other_orientations']})"
        )
    post = report["postprocessing"]
    console.print(
        f"post-processing: smoothing {post['posterior_smoothing_mm'] or 'none'} mm; largest component "
        f"{', '.join(post['largest_component']) or 'none'}; fill holes {', '.join(post['fill_holes']) or 'none'}"
    )
    for rule in post["summed_probability_rules"]:
        console.print(
            f"  summed probability: {rule['first_class']} + {rule['second_class']} against {rule['external_class']}"
        )
    for rule in post["slice_exclusion_rules"]:
        dominant = rule["higher_class"] if rule["higher_dominates"] else rule["lower_class"]
        console.print(f"  slice exclusion: {rule['higher_class']} above {rule['lower_class']} ({dominant} dominates)")
