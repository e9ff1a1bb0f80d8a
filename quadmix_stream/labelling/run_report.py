"""What a labelling run did: per-rank statistics and the run's result and summary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.labelling.dist import World
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.records import write_root_json
from quadmix_stream.labelling.roots import WORK_DIR, Root


@dataclass
class RankStats:
    """What one rank did in this run (timings are not part of the dataset)."""

    rank: int = 0
    units: int = 0
    relabelled: int = 0
    docs: int = 0
    wall_s: float = 0.0
    read_s: float = 0.0
    write_s: float = 0.0
    wait_s: float = 0.0
    commit_s: float = 0.0
    cpu_main_s: float = 0.0  # CPU seconds of this rank's process while labelling its units
    cpu_helper_s: float = 0.0  # CPU seconds of its I/O helper process (0 with io_workers: 0)
    label_s: dict[str, float] = field(default_factory=dict)
    label_docs: dict[str, int] = field(default_factory=dict)


@dataclass
class RunResult:
    """Returned on every rank; ``manifest`` and ``summary`` on rank 0 only."""

    root: Path | str
    world: int
    planned: int
    skipped: int
    todo: int
    stale: int
    manifest: Manifest | None = None
    issues: Issues | None = None
    stats: list[RankStats] = field(default_factory=list)
    wall_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    executor: str = "local"

    def summary(self) -> str:
        """The lines printed at the end of a run (and kept in ``last_run.json``)."""
        lines = []
        docs = sum(s.docs for s in self.stats)
        train = self.phases.get("train", 0.0)
        wall = self.wall_s - train
        lines.append(
            f"labelled {docs} documents in {self.todo} of {self.planned} units with "
            + (
                f"{self.world} rank(s)"
                if self.executor == "local"
                else f"{self.world} Ray task slots"
            )
            + f" in {wall:.1f}s ({docs / max(wall, 1e-9):,.0f} docs/s"
            + (f"; training took {train:.1f}s more" if train >= 0.05 else "")
            + f"); skipped {self.skipped} finished unit(s), relabelled stale columns in "
            f"{self.stale}"
        )
        cols: dict[str, list[float]] = {}
        for s in self.stats:
            for c, sec in s.label_s.items():
                a = cols.setdefault(c, [0.0, 0.0])
                a[0] += sec
                a[1] += s.label_docs.get(c, 0)
        if cols:
            lines.append(f"  {'column':<16}{'docs':>10}{'seconds':>10}{'docs/s':>12}")
            for c, (sec, n) in cols.items():
                lines.append(f"  {c:<16}{int(n):>10}{sec:>10.2f}{n / max(sec, 1e-9):>12,.0f}")
        io = [sum(getattr(s, k) for s in self.stats) for k in ("read_s", "write_s", "wait_s")]
        lines.append(
            f"  reader (parallel to labelling): read+parse {io[0]:.2f}s, write+hash {io[1]:.2f}s;"
            f" labelling waited {io[2]:.2f}s for it"
        )
        cpu = [sum(getattr(s, k) for s in self.stats) for k in ("cpu_main_s", "cpu_helper_s")]
        lines.append(f"  CPU while labelling: main {cpu[0]:.2f}s + I/O helper {cpu[1]:.2f}s")
        if self.phases:
            lines.append("  phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.phases.items()))
        if self.manifest is not None:
            m = self.manifest
            lines.append(
                f"dataset: {self.root} ({m.format}, {len(m.shards)} shards, {m.rows} documents, "
                f"domains {len(m.domains)}, scorers {m.scorer_names})"
            )
        if self.issues is not None and self.issues.counts:
            lines.append("per-document issues (counted, none dropped silently):")
            lines.extend(self.issues.report())
        return "\n".join(lines)


def gather_stats(world: World, root: Root, stats: RankStats) -> list[RankStats]:
    """Every rank's stats on rank 0 (through the work folder); this rank's elsewhere."""
    wd = f"{WORK_DIR}/ranks"
    write_root_json(root, f"{wd}/rank-{world.rank:05d}.json", asdict(stats))
    world.all_ok(True)
    if world.rank != 0:
        return [stats]
    out = []
    for r in range(world.size):
        data = root.read_bytes(f"{wd}/rank-{r:05d}.json")
        if data is None:
            raise LabelError(f"{root.where(f'{wd}/rank-{r:05d}.json')}: rank {r} left no stats")
        out.append(RankStats(**json.loads(data)))
    return out


__all__ = ["RankStats", "RunResult", "gather_stats"]
