"""Run the benchmarks and write BENCHMARKS.md: one marked section per bench module, others' sections kept.

Usage: ``python -m bench`` (every ``bench/*_bench.py``) or ``python -m bench load pipeline`` (some of them).
Each module exposes ``run() -> str`` returning a markdown section; a run replaces only its own sections.
"""

from __future__ import annotations

import importlib
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "BENCHMARKS.md"
FIRST = ["load_bench"]
"""Modules listed first, in this order; the rest follow alphabetically."""
TITLE = "# Benchmarks\n\nProduced by `make bench` (`python -m bench`); each section says what it measures.\n"


def _modules() -> list[str]:
    found = sorted(p.stem for p in Path(__file__).parent.glob("*_bench.py"))
    return [m for m in FIRST if m in found] + [m for m in found if m not in FIRST]


def _marker(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def _existing_sections(text: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", re.DOTALL)
    return {match.group(1): match.group(2) for match in pattern.finditer(text)}


def main(selected: list[str]) -> None:
    modules = _modules()
    chosen = [m for m in modules if not selected or any(m.startswith(s) for s in selected)]
    sections = _existing_sections(OUTPUT.read_text()) if OUTPUT.exists() else {}
    for name in chosen:
        started = time.perf_counter()
        print(f"running bench.{name} ...", flush=True)
        body = importlib.import_module(f"bench.{name}").run()
        stamp = f"\n_{time.strftime('%Y-%m-%d')}, {platform.machine()}, Python {platform.python_version()}, "
        sections[name] = body.rstrip() + stamp + f"bench took {time.perf_counter() - started:.0f} s._\n"
        print(sections[name])
        _write(modules, sections)  # after each bench: a later one that fails loses nothing
    print(f"wrote {OUTPUT}")


def _write(modules: list[str], sections: dict[str, str]) -> None:
    ordered = [m for m in modules if m in sections] + [m for m in sections if m not in modules]
    parts = [TITLE] + [f"{_marker(m)[0]}\n{sections[m]}{_marker(m)[1]}\n" for m in ordered]
    OUTPUT.write_text("\n".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
