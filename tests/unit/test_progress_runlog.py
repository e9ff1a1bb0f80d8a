"""Progress lines and the run log's resume rules (no processes)."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

from quadmix_stream.progress import Progress, fmt_duration
from quadmix_stream.trainers.runlog import LoggingConfig, read_log, truncate_log, wall_time


def test_progress_plain_lines_every_interval_with_eta():
    s = io.StringIO()
    p = Progress("job", 10, initial=2, every_s=0.05, stream=s)
    p.update(1, loss=3.21)  # before the interval: no line
    assert s.getvalue() == ""
    time.sleep(0.06)
    p.update(1, loss=2.5, tokens_per_s=12345.6)
    (line,) = s.getvalue().splitlines()
    assert re.match(
        r"\[job\] step 4/10 \(40%\) \| loss 2\.5 \| tokens/s 12,346 \| elapsed \d+s", line
    )
    assert "| ETA " in line
    p.update(1)
    p.close()  # the final count, once
    last = s.getvalue().splitlines()[-1]
    assert last.startswith("[job] step 5/10 (50%)") and p.lines == 2
    p = Progress("job", 3, every_s=0, stream=s)
    p.update(3)
    p.close()  # the last line already says 3/3: not printed twice
    assert p.lines == 1 and s.getvalue().splitlines()[-1].startswith("[job] step 3/3 (100%)")


def test_progress_disabled_off_rank_zero_and_bar_on_request():
    s = io.StringIO()
    p = Progress("job", 5, enabled=False, every_s=0, stream=s)
    p.update(5)
    p.close()
    assert s.getvalue() == ""
    s = io.StringIO()
    with Progress("bar", 5, every_s=0, stream=s, bar=True) as b:
        b.update(5, loss=1.0)
    assert "5/5" in s.getvalue() and "loss=1" in s.getvalue()


def test_fmt_duration():
    assert [fmt_duration(x) for x in (0, 59.4, 75, 3700)] == ["0s", "59s", "1m15s", "1h01m"]


def test_truncate_log_keeps_invocations_and_one_record_per_step(tmp_path):
    recs = [
        {"event": "start", "step": 0, "time": 100.0},
        *({"step": s, "loss": 1.0, "time": 100.0 + s} for s in range(1, 7)),
        {"event": "checkpoint", "step": 4, "time": 104.5},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert truncate_log(path, 4) == 2
    got = read_log(path)
    assert [r.get("step") for r in got if "loss" in r] == [1, 2, 3, 4]
    marker = [r for r in got if r.get("event") == "truncated"]
    assert marker == [{"event": "truncated", "after_step": 4, "dropped": 2, "time": 106.0}]
    assert truncate_log(path, 4) == 0  # idempotent
    # a second invocation: 2 s wasted before the kill + 106 - 100 in the first one
    with open(path, "a") as f:
        for r in ({"event": "start", "step": 4, "time": 200.0}, {"step": 5, "time": 202.0}):
            f.write(json.dumps(r) + "\n")
    assert wall_time(read_log(path)) == pytest.approx(6.0 + 2.0)


def test_wall_time_leaves_out_the_time_between_a_kill_and_the_resume():
    """A resumed trainer writes `resume` before `start`; the hour the run lay dead is not its."""
    recs = [
        {"event": "start", "step": 0, "time": 0.0},
        {"step": 1, "loss": 1.0, "time": 10.0},
        {"event": "checkpoint", "step": 1, "time": 11.0},
        {"event": "truncated", "after_step": 1, "dropped": 1, "time": 12.0},
        {"event": "resume", "step": 1, "time": 3600.0},
        {"event": "start", "step": 1, "time": 3601.0},
        {"step": 2, "loss": 1.0, "time": 3610.0},
        {"event": "resume", "step": 2, "time": 7200.0},  # resumed again, at once finished
        {"event": "start", "step": 2, "time": 7203.0},
    ]
    assert wall_time(recs) == pytest.approx(12.0 + 10.0 + 3.0)


def test_logging_config_checks_wandb():
    assert LoggingConfig(wandb={"project": "p", "mode": "offline"}).wandb
    with pytest.raises(ValueError, match="project"):
        LoggingConfig(wandb={"entity": "x"})
    with pytest.raises(ValueError, match="unknown key"):
        LoggingConfig(wandb={"project": "p", "projcet": "q"})


def test_heartbeat_lines_while_a_call_runs_and_counted_closes():
    from quadmix_stream.progress import counted, heartbeat

    s = io.StringIO()
    with heartbeat("child", every_s=0.2, stream=s):
        time.sleep(0.5)
    lines = s.getvalue().splitlines()
    assert re.fullmatch(r"\[child\] running, elapsed \d+s", lines[0]) and len(lines) >= 3
    assert lines[-1].startswith("[child] done in ")
    s = io.StringIO()
    p = Progress("read", unit="doc", every_s=60, stream=s)
    assert sum(counted(range(7), p)) == 21
    assert re.match(r"\[read\] doc 7 \| elapsed \d+s \| ", s.getvalue())
