"""Text taken from files (UIDs, descriptions, paths, reasons) made safe to show and to store: it is data, never
markup, terminal control or spreadsheet formula.

- ``printable``: control characters (C0, DEL, C1: ESC, NUL, ...) shown as visible escapes (``\\x1b``), and
  undecodable bytes of non-UTF-8 file names (surrogate escapes) as ``\\xNN``, so any string can be printed and
  encoded as UTF-8.
- ``markup``: ``printable`` text escaped for rich, for mixing into markup strings.
- ``csv_cell``: ``printable`` text that a spreadsheet will not evaluate (a leading ``=``, ``+``, ``-``, ``@``,
  tab or carriage return gets a leading apostrophe, as OWASP recommends).
- ``relative_paths``: absolute paths under a root shortened to paths relative to it (folder names often name
  the patient).
- ``redact_quoted``: quoted values in a library's message replaced (libraries quote the values they complain
  about, patient names included).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters other than tab and line feed (those two are escaped only where one line is needed)."""
_LINE_BREAKS = re.compile(r"[\t\n\r]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTED = re.compile(r"""(?<!\w)(["'])[^\n]*\1|(?<!\w)["'][^\n]*$""", re.MULTILINE)
"""From a quote that opens a value (no letter or digit before it) to the last same quote of its line, or to the
end of the line when none closes it: quotes inside the value (``"Ann"Zzsecret"``) are covered too."""


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: object, *, single_line: bool = True) -> str:
    """``text`` with control characters and undecodable bytes shown as escapes (see the module docstring)."""
    value = text if isinstance(text, str) else str(text)
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    value = _CONTROL.sub(_escape_control, value)
    if single_line:
        value = _LINE_BREAKS.sub(_escape_control, value)
    return value


def markup(text: object) -> str:
    """``printable`` text escaped for rich markup: ``[red]`` in a UID stays the characters ``[red]``."""
    from rich.markup import escape

    return escape(printable(text))


def csv_cell(text: object) -> str:
    """``printable`` text that spreadsheets show as text, never evaluate as a formula."""
    value = printable(text)
    return "'" + value if value.startswith(_FORMULA_START) else value


def relative_paths(text: str, root: Path | None) -> str:
    """``text`` with every occurrence of the absolute folder ``root`` (and its resolved form) removed, so paths
    under it read relative to it."""
    if root is None:
        return text
    for form in dict.fromkeys((os.fspath(root), os.fspath(Path(root).absolute()), os.fspath(Path(root).resolve()))):
        prefix = form.rstrip(os.sep) + os.sep
        if len(prefix) > 1:
            text = text.replace(prefix, "")
    return text


def redact_quoted(text: str) -> str:
    """Quoted values in ``text`` replaced by ``"<redacted>"``: from an opening quote to the last same quote of
    its line (or the line's end). Over-redacts rather than leaks; join lines first where a value may span them."""
    return _QUOTED.sub('"<redacted>"', text)
