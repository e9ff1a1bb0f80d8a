"""The pretraining run's log: ``OUT/log.jsonl``, TensorBoard and Weights & Biases behind one option.

Recipe section (all optional)::

    logging:
      tensorboard: true          # OUT/tb; default: on when the tensorboard package is installed
      wandb: {project: my-proj}  # + entity, name, group, tags, mode (offline|online|disabled)
      progress_every: 5          # seconds between progress lines when stderr is not a terminal
                                 # (default: $QUADMIX_PROGRESS_S, else 5)

Resume rules (a killed run is run again with the same command):

* records past the checkpoint's step are cut from ``log.jsonl`` (they are trained again), leaving
  one ``{"event": "truncated"}`` marker that keeps their last time, so
* :func:`wall_time` counts every invocation: each ``resume`` or ``start`` event opens a segment
  that ends at the last ``time`` before the next invocation opens (the time a run spent killed,
  or waiting to be resumed, is not counted).
* W&B resumes the same run (its id is kept in ``OUT/wandb-run-id``); it drops steps it has
  already seen, so the redone steps keep their first values there. Offline, every invocation
  writes its own ``OUT/wandb/offline-run-*`` folder under that id (``wandb sync`` joins them).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quadmix_stream.storage.io import atomic_write_text
from quadmix_stream.storage.redact import redact

WANDB_KEYS = {"project", "entity", "name", "group", "tags", "mode", "notes"}
#: events that mark an invocation, not a step: never cut by :func:`truncate_log`
KEEP_EVENTS = {"start", "resume", "truncated"}
#: events that open an invocation (a resumed one writes ``resume`` before ``start``)
OPENERS = {"start", "resume"}


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool | None = None  # None: when installed; True: required
    wandb: dict[str, Any] | None = None  # {project: …, …}; mode offline works without network
    progress_every: float | None = None  # seconds; default $QUADMIX_PROGRESS_S or 5

    def __post_init__(self) -> None:
        w = self.wandb
        if w is None:
            return
        if not isinstance(w, Mapping) or not isinstance(w.get("project"), str):
            raise ValueError(f"wandb: a mapping with at least {{project: NAME}}, got {w!r}")
        bad = sorted(set(w) - WANDB_KEYS)
        if bad:
            raise ValueError(f"wandb: unknown key(s) {bad}; known: {sorted(WANDB_KEYS)}")


def redact_record(value: Any) -> Any:
    """``value`` with every string in it (nested mappings and lists too) through
    :func:`~quadmix_stream.storage.redact.redact`: a dataset URL or a storage error in a record
    keeps its credentials out of ``log.jsonl`` and W&B. Keys are names, never redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_record(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_record(v) for v in value]
    return value


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def truncate_log(path: Path, step: int) -> int:
    """Cut the records of steps after ``step`` (a resume redoes them); returns how many.

    The cut records are replaced, where the first one stood, by one marker
    ``{"event": "truncated", "after_step": step, "dropped": n, "time": last time}``.
    """
    recs = read_log(path)
    keep: list[dict] = []
    dropped: list[dict] = []
    at = None
    for r in recs:
        if r.get("event") in KEEP_EVENTS or int(r.get("step", 0)) <= step:
            keep.append(r)
        else:
            at = len(keep) if at is None else at
            dropped.append(r)
    if not dropped:
        return 0
    assert at is not None
    times = [float(r["time"]) for r in dropped if "time" in r]
    marker: dict[str, Any] = {"event": "truncated", "after_step": step, "dropped": len(dropped)}
    if times:
        marker["time"] = max(times)
    keep.insert(at, marker)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(dropped)


def wall_time(records: list[dict]) -> float:
    """Seconds spent over every invocation of the run (see the module's docstring).

    An invocation opens with ``resume`` (a resumed one writes it first) or ``start``; the time
    between a killed invocation's last record and the next one's opening is not the run's.
    """
    total, start, last, prev = 0.0, None, None, None
    for r in records:
        if "time" not in r:
            continue
        t, event = float(r["time"]), r.get("event")
        # a `start` right after its own invocation's `resume` continues that segment
        if event in OPENERS and not (event == "start" and prev == "resume"):
            if start is not None and last is not None:
                total += last - start
            start = last = t
        elif start is not None:
            last = max(last or start, t)
        prev = event
    if start is not None and last is not None:
        total += last - start
    return total


class RunLogger:
    """Rank 0's sinks: ``log.jsonl`` always; TensorBoard and W&B as configured.

    Args:
        out: the run folder.
        cfg: the ``logging`` section.
        run_config: the whole recipe, as a plain mapping (stored as the W&B run's config).
        enabled: ``False`` on other ranks (nothing is written).
    """

    def __init__(
        self,
        out: Path,
        cfg: LoggingConfig,
        run_config: Mapping[str, Any],
        enabled: bool = True,
    ) -> None:
        self.path = out / "log.jsonl"
        self.enabled = enabled
        self.tb = self.wandb_run = None
        if not enabled:
            return
        if cfg.tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if cfg.tensorboard:
                    raise ValueError(
                        "logging.tensorboard: true needs the tensorboard package: "
                        "pip install 'quadmix-stream[logging]'"
                    ) from None
            else:
                self.tb = SummaryWriter(str(out / "tb"))
        if cfg.wandb is not None:
            # the recipe names the dataset, maybe as a URL with credentials: never to W&B
            self.wandb_run = _wandb_init(out, dict(cfg.wandb), redact_record(run_config))

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record (with its ``time``) to ``log.jsonl``."""
        if self.enabled:
            with open(self.path, "a") as f:
                rec = redact_record({**rec, "time": round(time.time(), 3)})
                f.write(json.dumps(rec) + "\n")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars for TensorBoard and W&B (names with ``/`` group into sections)."""
        if not self.enabled:
            return
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(values), step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _wandb_init(out: Path, opts: dict[str, Any], run_config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "logging.wandb needs the wandb package: pip install 'quadmix-stream[logging]'"
        ) from None
    id_file = out / "wandb-run-id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id is None:
        run_id = secrets.token_hex(6)  # W&B ids: lower-case letters and digits
        atomic_write_text(id_file, run_id + "\n")
    mode = opts.pop("mode", None) or os.environ.get("WANDB_MODE")
    # online: continue the same run on resume. Offline (wandb 0.31) writes an empty run file
    # when asked to resume, so each invocation gets its own offline folder with the same id,
    # which `wandb sync` uploads into one run.
    resume = None if mode in ("offline", "dryrun", "disabled") else "allow"
    return wandb.init(dir=str(out), id=run_id, resume=resume, config=run_config, mode=mode, **opts)
