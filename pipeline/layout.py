"""Every path under an output prefix, spelled in one place.

    OUTPUT/run.json                 run identity + fingerprint (first run writes it; later runs must match)
    OUTPUT/inputs.json              size + ETag (or mtime) of every input shard, as first planned
    OUTPUT/lease.json               the running driver (owner, host, pid, heartbeat); absent when none runs
    OUTPUT/shards/<unit>.tar        --output-format webdataset: edited images + per-sample JSON (ok rows only)
    OUTPUT/ledger/<unit>.parquet    --output-format webdataset: one row per input row of the unit
    OUTPUT/data/<unit>.parquet      --output-format parquet: one row per input row, ledger columns + image bytes
    OUTPUT/commits/<unit>.json      written LAST, by the driver only: the unit exists from this moment on
    OUTPUT/summary.json             the last finished run's counts
    OUTPUT/metrics.json, .md        eval: the aggregated metrics of the committed ledger
    OUTPUT/logs/                    a local output's driver log files (pipeline/terminal.py)

A unit's files are named after the unit, so a retried task rewrites the same names and the orphan sweep
knows every file a unit can have. Other modules ask this one for paths; none spells them (tests/
test_structure.py checks), so a new file under the prefix is added here and nowhere else.

The same module names the two other folders this project writes: a training run's (`TrainLayout`) and a
procedural triplet dataset's (`ProceduralLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

TMP_PREFIX = ".tmp-"  # half-written local files (Store.write_atomic); readers skip them, the sweep removes them


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one output prefix: relative ones for a `Store` on that prefix, `url()` for the full URL."""

    prefix: str = ""  # the output prefix as a URL or absolute path (Store.url), without a trailing slash

    RUN_RECORD: ClassVar[str] = "run.json"
    SUMMARY: ClassVar[str] = "summary.json"
    INPUTS_RECORD: ClassVar[str] = "inputs.json"
    LEASE: ClassVar[str] = "lease.json"
    METRICS_JSON: ClassVar[str] = "metrics.json"
    METRICS_MD: ClassVar[str] = "metrics.md"
    LOGS: ClassVar[str] = "logs"
    COMMITS: ClassVar[str] = "commits"
    ATTEMPTS: ClassVar[str] = "attempts"  # per stage and unit, the worker deaths so far (pipeline/quarantine.py)
    # unit data folders -> the suffix of their files; every unit file of every output format lives in one
    UNIT_FOLDERS: ClassVar[dict[str, str]] = {"shards": ".tar", "ledger": ".parquet", "data": ".parquet"}

    def url(self, rel: str = "") -> str:
        return f"{self.prefix}/{rel}" if rel else self.prefix

    # ---- unit files (relative paths)

    def shard(self, unit: str) -> str:
        """The webdataset format's tar of a unit's ok rows."""
        return f"shards/{unit}.tar"

    def ledger(self, unit: str) -> str:
        """The webdataset format's ledger file of a unit."""
        return f"ledger/{unit}.parquet"

    def data(self, unit: str) -> str:
        """The parquet format's one file of a unit: ledger columns and image bytes."""
        return f"data/{unit}.parquet"

    def commit(self, unit: str) -> str:
        return f"{self.COMMITS}/{unit}.json"

    def attempt(self, stage: str, unit: str) -> str:
        """A stage's record of the worker deaths on a unit; only there while the unit is in that stage."""
        return f"{self.ATTEMPTS}/{stage.replace('+', '-')}/{unit}.json"

    def unit_files(self, unit: str) -> tuple[str, ...]:
        """Every file a unit may have in any output format: what replacing or sweeping a unit deletes."""
        return self.shard(unit), self.ledger(unit), self.data(unit)

    def unit_of(self, rel: str) -> str | None:
        """`ledger/<unit>.parquet`, `shards/<unit>.tar` or `data/<unit>.parquet` -> `<unit>`; None for
        anything else (temporaries, the commit records, the run's own files)."""
        folder, _, name = rel.partition("/")
        suffix = self.UNIT_FOLDERS.get(folder)
        if suffix is None or not name.endswith(suffix) or name.startswith(TMP_PREFIX):
            return None
        return name[: -len(suffix)]

    def commit_unit(self, name: str) -> str | None:
        """A name listed under the commits folder -> its unit; None for temporaries and other files."""
        if not name.endswith(".json") or name.startswith(TMP_PREFIX):
            return None
        return name[: -len(".json")]

    def managed_urls(self) -> tuple[str, ...]:
        """The folders a run owns (and its sweep deletes in): no input may lie under them."""
        return tuple(self.url(folder) + "/" for folder in (*self.UNIT_FOLDERS, self.COMMITS, self.ATTEMPTS))

    def describe(self) -> str:
        """The layout in a few words, for --help."""
        folders = ", ".join(f"{f}/" for f in (*self.UNIT_FOLDERS, self.COMMITS))
        return f"{folders}, {self.RUN_RECORD}, {self.SUMMARY}"


class TrainLayout:
    """A training run's folder: its identity record (see pipeline/training/state.py for the checkpoints)."""

    RUN_RECORD: ClassVar[str] = OutputLayout.RUN_RECORD


class ProceduralLayout:
    """`make-dataset --procedural`: triplet shards and the manifest that lists them (written last)."""

    MANIFEST: ClassVar[str] = "manifest.json"

    @staticmethod
    def shard(index: int) -> str:
        return f"shards/procedural-{index:05d}.tar"
