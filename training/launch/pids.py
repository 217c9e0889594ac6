"""Process identity and signalling for run processes that may not be our children (the job queue's: a worker
that restarts adopts the runs of the one before).

A pid alone is not an identity: after a restart the number may belong to another program. A job is
recorded with its pid and the kernel's start time of that pid, and is only signalled when both match.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (Linux), or None where it cannot be read."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def is_alive(pid: int | None, start_time: str | None = None) -> bool:
    """Whether `pid` runs and, when `start_time` is known, is still the same process (zombies count as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc: os.kill is all we have
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or fields[19] == start_time


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a whole process group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def signal_name(returncode: int) -> str:
    """`SIGKILL` for -9, and so on; `signal N` for numbers Python does not name."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
