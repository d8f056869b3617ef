"""The `innereye-batch` command line: parses options, calls one function per command, renders the result.

Heavy libraries (torch, highdicom, SimpleITK) are imported inside the commands, so `--help` starts fast.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec

import typer
from rich.console import Console
from rich.text import Text

from innereye_batch import NOT_FOR_CLINICAL_USE, __version__
from innereye_batch.errors import EXIT_USAGE, InnerEyeBatchError, UsageError
from innereye_batch.text import printable

if TYPE_CHECKING:
    from innereye_batch.writers.registry import WriterOptions

app = typer.Typer(
    name="innereye-batch",
    help="Run InnerEye registered models over folders of DICOM series, in batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: starts in half the time, and keeps [brackets] as written
)
console = Console(stderr=True)
P = ParamSpec("P")
stdout = Console()


def _version(value: bool) -> None:
    if value:
        print(f"innereye-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Run InnerEye registered models over folders of DICOM series, in batch."""


def _fail(error: InnerEyeBatchError) -> typer.Exit:
    console.print(Text.assemble(("error:", "red"), " ", printable(error, single_line=False)))
    return typer.Exit(error.exit_code)


def _reports_errors(command: Callable[P, None]) -> Callable[P, None]:
    """Turn the package's own errors into a one-line message and their exit code (2 for usage errors)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except InnerEyeBatchError as error:
            raise _fail(error) from error

    return wrapper


@app.command()
@_reports_errors
def scan(
    input: Annotated[Path, typer.Option("--input", "-i", help="Folder tree of DICOM files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")] = False,
    workers: Annotated[
        int,
        typer.Option(help="Header-reading processes (0 = automatic: one per core for 2,000 files or more).", min=0),
    ] = 0,
    regrid_irregular: Annotated[
        bool,
        typer.Option(help="Report tilted and variable-spacing stacks as loadable (resampled onto a regular grid)."),
    ] = False,
) -> None:
    """Find every series under --input (headers only) and report geometry and problems."""
    from innereye_batch.dicom.report import render_scan_table, scan_to_json
    from innereye_batch.dicom.scan import scan_tree

    if not input.is_dir():
        console.print(Text.assemble(("error:", "red"), f" input folder not found: {printable(input)}"))
        raise typer.Exit(EXIT_USAGE)
    result = scan_tree(input, workers=workers or None, regrid_irregular=regrid_irregular)
    if as_json:
        sys.stdout.write(json.dumps(scan_to_json(result, input), indent=2) + "\n")
    else:
        render_scan_table(result, stdout, input)


@app.command()
@_reports_errors
def inspect(
    model: Annotated[Path, typer.Option("--model", "-m", help="Registered model folder (final_model/).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(help="Allow checkpoints that need arbitrary code to unpickle. Only for files you trust."),
    ] = False,
) -> None:
    """Describe a registered model folder: structures, checkpoints, architecture, pre-processing."""
    from innereye_batch.model.report import inspect_model, render_inspect

    report = inspect_model(model, trust_checkpoint=trust_checkpoint)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render_inspect(report, stdout)
    if not report.get("loadable", False):
        raise typer.Exit(EXIT_USAGE)


_PatchBatch = Annotated[
    str,
    typer.Option(
        help="Segmentation: sliding-window patches per forward pass, or auto (from free GPU memory; 4 on a CPU)."
    ),
]
"""``--patch-batch`` of run and serve."""
_GpuMemory = Annotated[
    float | None,
    typer.Option(
        help="GiB that torch may allocate on each GPU (a shared GPU, or a smaller card's budget); patch batch and "
        "where accumulators live are chosen within it. Default: all the GPU has. No effect on a CPU.",
        min=0.1,
    ),
]
"""``--gpu-memory`` of run and serve."""


def _patch_batch(value: str) -> int:
    """``--patch-batch``: a positive number, or auto (0)."""
    if value.strip().lower() == "auto":
        return 0
    if not value.strip().isdigit() or int(value) < 1:
        raise UsageError(f"--patch-batch must be a positive number or auto, got {value!r}")
    return int(value)


def _writer_processes(value: str) -> int | None:
    """``--writers``: a number of processes (0: threads), or auto (None)."""
    if value.strip().lower() == "auto":
        return None
    if not value.strip().isdigit():
        raise UsageError(f"--writers must be a number (0 for threads) or auto, got {value!r}")
    return int(value)


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


@app.command()
@_reports_errors
def run(
    model: Annotated[Path, typer.Option("--model", "-m", help="Registered model folder (final_model/).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Folder tree of DICOM files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (one sub-folder per series).")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes decoding series (0 = inline).", min=0)] = 2,
    decode_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a worker may take to decode one series before that series fails and the worker is "
            "stopped (a codec that never returns, storage that stopped answering); 0: no limit.",
            min=0,
            max=1_000_000,
        ),
    ] = 1800,
    write_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds the writers may take over one series' outputs before that series fails, its outputs are "
            "removed and its writer is given up (storage that stopped answering, a hung network mount); 0: no limit.",
            min=0,
            max=1_000_000,
        ),
    ] = 1800,
    patch_batch: _PatchBatch = "auto",
    writers: Annotated[
        str,
        typer.Option(
            help="Writer processes, 0 (two threads in this process), or auto (on a GPU one per spare core, at most "
            "8; on a CPU threads)."
        ),
    ] = "auto",
    batch_size: Annotated[int, typer.Option(help="Classification: images per forward pass.", min=1)] = 16,
    explain: Annotated[
        str,
        typer.Option(
            help="Classification: explanation heat maps, comma-separated: gradcam, integrated-gradients, "
            "gradient-shap (needs the [explain] extra)."
        ),
    ] = "",
    amp: Annotated[
        bool,
        typer.Option(
            help="Mixed precision: bf16/fp16 on CUDA, bf16 on CPUs that compute it natively (AMX, AVX512-BF16). "
            "Much faster there; results differ slightly from fp32."
        ),
    ] = False,
    gpu_memory: _GpuMemory = None,
    formats: Annotated[
        str,
        typer.Option(
            help="Comma-separated outputs (default: the model's task's): segmentation nifti, dicom-seg, rtstruct, "
            "preview, json; classification json, explanation-png, explanation-npz, explanation-dicom."
        ),
    ] = "",
    series: Annotated[
        list[str] | None, typer.Option("--series", help="Only this SeriesInstanceUID (repeatable).")
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option("--modality", help="Only series of this Modality (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo series that are already done.")] = False,
    verify_outputs: Annotated[
        bool,
        typer.Option(
            help="Skip a done series only when its outputs' sha256 equal those recorded when they were written "
            "(reads every output; by default presence and size are checked). A series whose outputs changed, or "
            "whose record has no sha256 (an earlier version's), is redone and named in summary.json."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="List what would run, in the order it would run (largest series first), write nothing.")
    ] = False,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed series.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables (for cron).")] = False,
    log_json: Annotated[bool, typer.Option(help="One JSON line per event on stderr (for cron).")] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(help="Allow checkpoints that need arbitrary code to unpickle. Only for files you trust."),
    ] = False,
    max_voxels: Annotated[
        int,
        typer.Option(
            min=1,
            help="Largest grid a series may have (source or resampled); larger ones fail unread. A 2-D image for a "
            "classification model has at most 67108864 pixels whatever this says.",
        ),
    ] = 2**29,
    regrid_irregular: Annotated[
        bool,
        typer.Option(
            help="Resample gantry-tilted and variable-spacing stacks onto a regular grid instead of refusing them "
            "(NIfTI on that grid; DICOM outputs mapped back onto the source slices)."
        ),
    ] = False,
    seg_type: Annotated[
        str, typer.Option(help="DICOM-SEG type: binary (Segmentation Storage) or labelmap (Label Map Segmentation).")
    ] = "binary",
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Write preview.png per series.")] = True,
    clinical_marker: Annotated[
        str,
        typer.Option(help='Text put into DICOM output descriptions and previews; "" for none.'),
    ] = NOT_FOR_CLINICAL_USE,
    devices: Annotated[
        str,
        typer.Option(
            help="One model replica per device, comma-separated: GPU indices (0,1), cuda:N, cpu, or all "
            "(default with --device auto: every GPU when there are several)."
        ),
    ] = "",
    shard: Annotated[
        str,
        typer.Option(
            help="K/N: only shard K (0..N-1) of N; N runs into one --output process every series once "
            "(a job array), the last one merges the summary."
        ),
    ] = "",
    executor: Annotated[str, typer.Option(help="local (this machine, --devices) or ray (needs the [ray] extra).")] = (
        "local"
    ),
    ray_address: Annotated[
        str, typer.Option(help="--executor ray: the cluster to join (e.g. auto); default: a local Ray instance.")
    ] = "",
    ray_actors: Annotated[
        int, typer.Option(help="--executor ray: inference actors (0: one per GPU, else one per CPU group).")
    ] = 0,
    ray_cpus_per_actor: Annotated[int, typer.Option(help="--executor ray: CPUs each actor reserves.")] = 2,
) -> None:
    """Run the model over every series under --input: segmentation writes NIfTI, DICOM-SEG, RTSTRUCT, a preview
    and JSON per series; classification writes JSON (and explanation heat maps) per image.

    Exit code 0 when every series succeeded (or was already done), 1 when some failed or were not run (the run
    stopped before them: --fail-fast; an interrupt exits 130) or the summary could not be written, 2 for usage
    and model-folder errors and for an output folder held by another run. A shard that merges the summary exits 1
    also when a series of another shard failed or was not run.
    Safe to rerun: finished series are skipped, interrupted ones are redone.
    """
    from innereye_batch.pipeline.progress import RunProgress
    from innereye_batch.pipeline.ray_executor import RayOptions
    from innereye_batch.pipeline.render import render_dry_run, render_run_report
    from innereye_batch.pipeline.run import RunOptions, run_batch
    from innereye_batch.pipeline.shards import parse_shard

    kind = executor.strip().lower()
    if kind not in ("local", "ray"):
        raise UsageError(f"--executor must be local or ray, got {executor!r}")
    if kind == "ray" and devices:
        raise UsageError("--devices applies to --executor local; Ray places one actor per GPU itself (--ray-actors)")
    if ray_actors < 0 or ray_cpus_per_actor < 1:
        raise UsageError("--ray-actors must be 0 or more and --ray-cpus-per-actor 1 or more")
    options = RunOptions(
        model=model,
        input=input,
        output=output,
        device=device,
        workers=workers,
        decode_timeout_s=decode_timeout,
        write_timeout_s=write_timeout,
        patch_batch=_patch_batch(patch_batch),
        writer_processes=_writer_processes(writers),
        batch_size=batch_size,
        explain=_split([explain]),
        amp=amp,
        gpu_memory_gib=gpu_memory,
        formats=_split([formats]),
        series_uids=_split(series or []),
        modalities=_split(modality or []),
        overwrite=overwrite,
        verify_outputs=verify_outputs,
        dry_run=dry_run,
        fail_fast=fail_fast,
        trust_checkpoint=trust_checkpoint,
        max_voxels=max_voxels,
        regrid_irregular=regrid_irregular,
        writer_options=_writer_options(seg_type, clinical_marker),
        preview=preview,
        devices=_split([devices]),
        shard=parse_shard(shard) if shard else None,
        executor=kind,
        ray=RayOptions(address=ray_address or None, actors=ray_actors, cpus_per_actor=ray_cpus_per_actor),
    )
    progress = RunProgress(quiet=quiet, log_json=log_json, console=console)
    report = run_batch(options, progress)
    if dry_run:
        render_dry_run(report, stdout)
        return
    if not quiet and not log_json:
        render_run_report(report, output, stdout)
    elif quiet and not log_json:  # cron mails stderr: each failed series, and the summary's failure, a line each
        for result in report.results:
            if result.status == "failed":
                print(f"failed {printable(result.key)}: {printable(result.reason)}", file=sys.stderr)
        if report.merged and report.merged_unfinished:  # this shard merged: the exit code counts every shard's
            print(
                f"{report.merged_unfinished} series of the merged summary (every shard's) failed or were not run: "
                "see summary.json",
                file=sys.stderr,
            )
        if report.summary_error:  # never a silent exit 1
            print(f"error: the run summary could not be written: {printable(report.summary_error)}", file=sys.stderr)
    if log_json:  # the run's last line: what a log reader needs without opening the summary
        from innereye_batch.writers.summary import status_counts

        progress.event(
            "run_finished",
            exit_code=report.exit_code,
            series=status_counts(report.results),  # this run's (this shard's)
            merged_unfinished=report.merged_unfinished if report.merged else None,
            skipped_files=len(report.skipped_files),
            summary=[str(p) for p in report.summary_paths],
            summary_error=report.summary_error,
        )
    raise typer.Exit(report.exit_code)


@app.command()
@_reports_errors
def serve(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="Model folder to serve, as DIR (id <model_name>:1) or ID=DIR; repeatable."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    state_dir: Annotated[
        Path, typer.Option(help="Folder of the job store, uploads while they run, and results.")
    ] = Path("innereye-batch-state"),
    api_secret_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API secret (else the environment variable INNEREYE_BATCH_API_SECRET)."),
    ] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No API secret: only allowed on a loopback host.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[
        bool, typer.Option(help="Mixed precision: bf16/fp16 on CUDA, bf16 on CPUs that compute it natively.")
    ] = False,
    patch_batch: _PatchBatch = "auto",
    gpu_memory: _GpuMemory = None,
    max_batch: Annotated[int, typer.Option(help="Real-time predict: most images per forward pass.")] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(help="Real-time predict: longest a request waits for others to share its batch.")
    ] = 10.0,
    keep_results: Annotated[float, typer.Option(help="Hours a finished job's results are kept.")] = 24.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (a zip, or one DICOM file).")] = 1024.0,
    max_unzipped_mb: Annotated[
        float, typer.Option(help="Largest total size a zip's members may declare (zip bombs are refused).")
    ] = 8192.0,
    max_zip_ratio: Annotated[
        float, typer.Option(help="Largest compression ratio of a zip, or of a member over 1 MiB.")
    ] = 200.0,
    max_queued_jobs: Annotated[
        int, typer.Option(min=1, help="Most jobs waiting to run; a further upload is answered 503 with Retry-After.")
    ] = 100,
    max_voxels: Annotated[
        int,
        typer.Option(
            min=1,
            help="Largest grid a series may have (source or resampled); a 2-D image for a classification model "
            "has at most 67108864 pixels whatever this says.",
        ),
    ] = 2**29,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(help="Allow checkpoints that need arbitrary code to unpickle. Only for files you trust."),
    ] = False,
    clinical_marker: Annotated[
        str, typer.Option(help='Text put into DICOM output descriptions and previews; "" for none.')
    ] = NOT_FOR_CLINICAL_USE,
) -> None:
    """Serve the models over HTTP, compatible with InnerEye's inference API: zipped series in, RT Structure
    Sets out (jobs in SQLite under --state-dir), and real-time classification of single images.

    Needs FastAPI and uvicorn (the serve extra). Every endpoint but / needs the header API_AUTH_SECRET unless
    --no-auth.
    """
    from innereye_batch.service.auth import read_secret
    from innereye_batch.service.models import model_sources
    from innereye_batch.service.options import ServeOptions, UploadLimits
    from innereye_batch.service.server import serve as run_service

    limits = UploadLimits(
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_unzipped_bytes=int(max_unzipped_mb * 2**20),
        max_ratio=max_zip_ratio,
    )
    options = ServeOptions(
        models=model_sources(model),
        host=host,
        port=port,
        state_dir=state_dir,
        api_secret=None if no_auth else read_secret(api_secret_file),
        no_auth=no_auth,
        device=device,
        amp=amp,
        patch_batch=_patch_batch(patch_batch),
        gpu_memory_gib=gpu_memory,
        trust_checkpoint=trust_checkpoint,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        keep_results_hours=keep_results,
        limits=limits,
        max_voxels=max_voxels,
        writer_options=_writer_options("binary", clinical_marker),
        max_queued_jobs=max_queued_jobs,
    )
    run_service(options)


@app.command()
@_reports_errors
def summarize(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder of a sharded run.")],
    shards: Annotated[
        int,
        typer.Option(min=0, help="N of the shards to merge (only needed when summaries of several N are present)."),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing.")] = False,
) -> None:
    """Merge the summaries of a sharded run's shards (summary.shard-K-of-N.json) into summary.json, summary.csv
    and report.html, as one unsharded run writes them. The shard that finishes last does this by itself.

    Exit code 0 when every series succeeded, 1 when some failed or were not run (a shard was interrupted) or the
    shards cannot be merged (one is missing, they saw different inputs or models, or a summary lists outputs no
    longer in the folder), 2 for usage errors.
    """
    from innereye_batch.pipeline.locks import shards_lock
    from innereye_batch.pipeline.render import count_line
    from innereye_batch.pipeline.summarize import merge_shard_summaries, shard_count
    from innereye_batch.results import UNFINISHED

    if not output.is_dir():
        raise UsageError(f"output folder not found: {output}")
    count = shard_count(output, shards or None)
    with shards_lock(output, count):
        merged = merge_shard_summaries(output, count)
    if not quiet:
        stdout.print(
            Text(
                f"{merged.count} shard summaries merged: {count_line(merged.results)}, "
                f"{len(merged.skipped_files)} file(s) not used; "
                f"{', '.join(p.name for p in merged.paths)} written in {printable(output)}/"
            )
        )
    raise typer.Exit(1 if any(r.status in UNFINISHED for r in merged.results) else 0)


def _writer_options(seg_type: str, clinical_marker: str) -> WriterOptions:
    """The format options of `run`; UsageError for an unknown --seg-type."""
    from innereye_batch.writers.registry import WriterOptions

    kind = seg_type.strip().upper()
    if kind not in ("BINARY", "LABELMAP"):
        raise UsageError(f"--seg-type must be binary or labelmap, got {seg_type!r}")
    try:
        return WriterOptions(seg_type="LABELMAP" if kind == "LABELMAP" else "BINARY", clinical_marker=clinical_marker)
    except ValueError as error:
        raise UsageError(f"--clinical-marker: {error}") from None


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    app()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (cron's timeout, systemd) stops like Ctrl-C: writes in flight finish, the summary is written."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
