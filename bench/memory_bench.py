"""Peak memory of one 512x512x300 CT on a CPU run: what the series' device work and the whole run take.

The issue's goal: a 512x512x300 CT runs within a stated budget on a 24 GB machine (and on a 16 GB GPU: the GPU
bench's ``--gpu-memory 16`` step). The series and the model's geometry are the GPU bench's (2 x 1 x 1 mm,
64x128x128 patches at half-patch stride, 9 outputs, 3 members, largest components); the networks are its
band networks with 4 initial channels and 2 levels, so that the CPU gets through the 300 slices in minutes.
Activations are small here; the arrays that grow with the series (image, resampled image, accumulators, the
label map) are the real model's.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

SHAPE = (300, 512, 512)
LIGHT = {"initial_feature_channels": 4, "num_downsampling_paths": 2}


def _model(root: Path) -> Path:
    from bench.gpu import BLOCK, band_network
    from innereye_batch.model.export import write_model_folder

    block = {**BLOCK, "architecture": {"name": "UNet3D", **LIGHT}}
    networks = [band_network(dict(LIGHT), seed) for seed in range(3)]
    return write_model_folder(root / "model", networks, model_name="MemoryBench", inference_block=block)


def _array_gib(shape: tuple[int, ...], itemsize: int = 4) -> float:
    return math.prod(shape) * itemsize / 2**30


def run() -> str:
    from bench.gpu import BLOCK, SPACING, STRUCTURES, body_phantom
    from innereye_batch.pipeline.run import RunOptions, run_batch
    from tests.factory import write_series

    with tempfile.TemporaryDirectory(prefix="innereye-bench-") as tmp:
        root = Path(tmp)
        write_series(root / "scans" / "ct", voxels=body_phantom(SHAPE, 7), spacing=SPACING, seed=7)
        model = _model(root)
        start = time.perf_counter()
        report = run_batch(RunOptions(model=model, input=root / "scans", output=root / "out", device="cpu"))
        wall = time.perf_counter() - start
        (result,) = report.results
        assert result.status == "ok", result.reason
        run_peaks = json.loads((root / "out" / "summary.json").read_text())["run"]["peak_memory_gib"]
    series_peak = result.peak_memory_gib["host"]
    outputs = len(STRUCTURES) + 1
    resampled = tuple(round(n * s / t) for n, s, t in zip(SHAPE, SPACING, BLOCK["target_spacing"], strict=True))
    arrays = {
        "image, float32": _array_gib(SHAPE),
        f"image resampled to {resampled[0]}x{resampled[1]}x{resampled[2]}": _array_gib(resampled),
        "accumulators (9 outputs and the weights)": _array_gib((outputs + 1, *resampled)),
        "label map, uint8": _array_gib(SHAPE, 1),
    }
    never_whole = _array_gib((outputs, *SHAPE))
    t = result.timings
    return "\n".join(
        [
            f"## Memory: one {SHAPE[1]}x{SHAPE[2]}x{SHAPE[0]} CT on a CPU run",
            "",
            f"One CT series of {SHAPE[0]} slices of {SHAPE[1]}x{SHAPE[2]} (1.25 x 0.8 x 0.8 mm) through `run` on the "
            "CPU with its defaults and every default output. The model has the GPU bench's geometry: resampled to "
            "2 x 1 x 1 mm, 64x128x128 patches at half-patch stride, 9 outputs, 3 members, largest components; its "
            "networks are light (4 initial channels, 2 levels), so activations are small and the arrays that grow "
            "with the series dominate. Peaks from `summary.json`: the series' own (`peak_memory_gib` of its row: "
            "the run process's resident set sampled every 20 ms during its device work) and the run's.",
            "",
            "| what | GiB |",
            "|---|---:|",
            f"| series' device work, peak of the run process | {series_peak:.2f} |",
            f"| run process, peak over the whole run (decoding and writing included) | {run_peaks['host']:.2f} |",
            f"| largest worker process (decoding) | {run_peaks['workers']:.2f} |",
            *(f"| of which: {name} | {gib:.2f} |" for name, gib in arrays.items()),
            "",
            f"The posteriors resampled back to {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} ({never_whole:.2f} GiB, and as much "
            "again for the resampling's temporaries) are never held whole: they are resampled and turned into labels "
            "a slab of slices at a time (`engine.postprocess.resampled_labels`, at most 256 MiB a slab, the same "
            "labels bit for bit).",
            "",
            f"Wall {wall:.0f} s (inference {t.get('infer', 0.0):.0f} s, resampling back and argmax "
            f"{t.get('postprocess', 0.0):.1f} s, largest components {t.get('refine', 0.0):.1f} s, writing "
            f"{t.get('write', 0.0):.1f} s). Budget stated: a {SHAPE[0]}-slice 512x512 CT needs about "
            f"{run_peaks['host'] + run_peaks['workers']:.1f} GiB of host memory for the run process and one decoding "
            "worker (each further decoding worker holds at most 2 decoded series), well within a 24 GB machine; a "
            "full-size network adds its activations (half the free memory at most on a GPU, 4 patches per forward "
            "pass on a CPU).",
        ]
    )
