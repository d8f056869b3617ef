"""Where work comes from: a Source finds the series of a run (today a folder tree; later e.g. a DICOMweb query).

A source returns what a header scan returns (``dicom.scan.ScanResult``: every series found and every file it
could not use), so planning, dry runs and the summary account for every input whatever its origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from innereye_batch.dicom.scan import ScanResult


class Source(Protocol):
    """Finds the series of a run."""

    @property
    def description(self) -> str:
        """What the run's summary records as its input (e.g. the folder)."""
        ...

    def discover(self) -> ScanResult:
        """Every series found (loadable or not) and every file that could not be used, with the reason."""
        ...


@dataclass(frozen=True)
class FolderSource:
    """Every DICOM file under a folder tree, found by a header scan."""

    root: Path
    workers: int | None = None
    """Header-reading processes (None: automatic, see ``scan_tree``)."""
    regrid_irregular: bool = False
    """Tilted and variable-spacing stacks become loadable (resampled onto a regular grid) instead of refused."""

    @property
    def description(self) -> str:
        return str(self.root)

    def discover(self) -> ScanResult:
        from innereye_batch.dicom.scan import scan_tree

        return scan_tree(self.root, workers=self.workers, regrid_irregular=self.regrid_irregular)
