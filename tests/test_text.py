"""Text from files shown and stored safely: control characters, undecodable bytes, markup, formulas, paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from innereye_batch.text import csv_cell, markup, printable, redact_quoted, relative_paths


def test_printable_escapes_control_characters_and_undecodable_bytes() -> None:
    assert printable("1.2\x1b[2J\x00.3") == "1.2\\x1b[2J\\x00.3"
    assert printable("a\nb\tc") == "a\\x0ab\\x09c"
    assert printable("a\nb", single_line=False) == "a\nb"
    name = os.fsdecode(b"slice\xff.dcm")
    assert printable(name) == "slice\\xff.dcm"
    printable(name).encode("utf-8")  # never raises
    assert printable("Müller ok") == "Müller ok"  # ordinary text unchanged


def test_markup_is_printed_literally() -> None:
    console = Console(record=True, width=200, force_terminal=True)
    console.print(f"[bold]series[/bold] {markup('1.2.3[/red] AXIAL [/w contrast]')}")
    assert "1.2.3[/red] AXIAL [/w contrast]" in console.export_text()


@pytest.mark.parametrize("value", ["=1+2", "+1", "-cmd", "@SUM(A1)", "\t=1", "\r=1"])
def test_csv_cells_never_start_a_formula(value: str) -> None:
    cell = csv_cell(value)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert cell.endswith(value.lstrip("\t\r"))


def test_relative_paths_and_redaction(tmp_path: Path) -> None:
    text = f"{tmp_path}/Doe_Jane/IM1.dcm: truncated"
    assert relative_paths(text, tmp_path) == "Doe_Jane/IM1.dcm: truncated"
    assert relative_paths(text, None) == text
    assert (
        redact_quoted("The string \"Smith\" is unlikely; value 'X'")
        == 'The string "<redacted>" is unlikely; value "<redacted>"'
    )
    leaky = {  # quotes inside the value, a value cut by a line break, pydicom's escaped repr
        'The string "Ann"Zzsecret" is unlikely': 'The string "<redacted>" is unlikely',
        'The string "Zzsecret': 'The string "<redacted>"',
        "Unable to convert 'a\\'b\"Zzsecret' to 'DA'": 'Unable to convert "<redacted>"',
        "the model's 'body': centroid": 'the model\'s "<redacted>": centroid',  # an apostrophe opens nothing
    }
    for text, redacted in leaky.items():
        assert redact_quoted(text) == redacted
        assert "Zzsecret" not in redact_quoted(text)
