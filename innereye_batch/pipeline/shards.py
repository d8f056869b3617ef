"""`--shard K/N`: a deterministic partition of a run's items by a stable hash of their key, with no coordinator.

Every item (and every series settled at planning, and every file the scan could not use) belongs to exactly one
of N shards: ``sha256(key) mod N``. N processes started with the same input, model and options, ``--shard 0/N``
to ``--shard N-1/N`` (a Slurm or Kubernetes job array), plan from the same header scan, each keeps its share, and
together they process every item exactly once. Each writes ``summary.shard-K-of-N.json``; a *plan fingerprint*
(over every key the unsharded plan holds) lets the merge prove that the shards saw the same cohort.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from innereye_batch.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
SHARD_SUMMARY_GLOB = "summary.shard-*-of-*.json"
_SHARD_SUMMARY = re.compile(r"^summary\.shard-(\d+)-of-(\d+)\.json$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"--shard {self.index}/{self.count}: K must be 0..N-1 (shards are numbered from 0, as "
                "Kubernetes' JOB_COMPLETION_INDEX and a Slurm --array=0-(N-1) are), and N at least 1"
            )

    @property
    def label(self) -> str:
        """``shard-K-of-N``, used in file names (locks, summaries)."""
        return f"shard-{self.index}-of-{self.count}"

    @property
    def summary_name(self) -> str:
        """This shard's summary in the output folder."""
        return f"summary.{self.label}.json"

    def owns(self, key: str) -> bool:
        """Whether the item (or file) with this key belongs to this shard."""
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> Shard; UsageError with an example otherwise."""
    match = _SHARD.match(text)
    if match is None:
        raise UsageError(f"--shard {text!r} is not K/N (for example --shard 0/4: the first of four shards)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_of(key: str, count: int) -> int:
    """The shard of ``key`` among ``count``: the first 8 bytes of its sha256, modulo ``count``.

    sha256, never Python's ``hash`` (salted per process), so that every process, on every machine, agrees.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def plan_fingerprint(keys: Iterable[str]) -> str:
    """sha256 over the sorted distinct keys of a whole (unsharded) plan; equal for shards that saw one cohort."""
    digest = hashlib.sha256()
    for key in sorted(set(keys)):
        digest.update(key.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def shard_from_summary_name(name: str) -> Shard | None:
    """The shard a ``summary.shard-K-of-N.json`` file name belongs to, or None for any other name."""
    match = _SHARD_SUMMARY.match(name)
    if match is None:
        return None
    try:
        return Shard(int(match.group(1)), int(match.group(2)))
    except UsageError:
        return None
