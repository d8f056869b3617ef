"""The `innereye-batch` command line: parses options, calls one function per command, renders the result.

Heavy libraries (torch, highdicom, SimpleITK) are imported inside the commands, so `--help` starts fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from innereye_batch import __version__
from innereye_batch.errors import EXIT_USAGE, InnerEyeBatchError

app = typer.Typer(
    name="innereye-batch",
    help="Run InnerEye registered models over folders of DICOM series, in batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
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
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(error.exit_code)


@app.command()
def scan(
    input: Annotated[Path, typer.Option("--input", "-i", help="Folder tree of DICOM files.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
    ] = False,
    workers: Annotated[int, typer.Option(help="Header-reading threads (0 = automatic).")] = 0,
) -> None:
    """Find every series under --input (headers only) and report geometry and problems."""
    from innereye_batch.dicom.report import render_scan_table, scan_to_json
    from innereye_batch.dicom.scan import scan_tree

    if not input.is_dir():
        console.print(f"[red]error:[/red] input folder not found: {input}")
        raise typer.Exit(EXIT_USAGE)
    result = scan_tree(input, workers=workers or None)
    if as_json:
        sys.stdout.write(json.dumps(scan_to_json(result), indent=2) + "\n")
    else:
        render_scan_table(result, stdout)


@app.command()
def inspect(
    model: Annotated[Path, typer.Option("--model", "-m", help="Registered model folder (final_model/).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            help="Allow checkpoints that need arbitrary code to unpickle. Only for files you trust."
        ),
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except InnerEyeBatchError as error:
        raise SystemExit(_fail(error).exit_code) from error


if __name__ == "__main__":
    main()
