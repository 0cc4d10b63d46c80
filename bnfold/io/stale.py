"""Leftovers of a bnfold process that was killed (SIGKILL, power loss) while saving, cleared by the next save.

Every temporary bnfold stages beside a destination is named ``.<name>.<pid>.<random>.tmp``, and the backup a
data+model pair commit keeps of the old data file ``.<name>.<pid>.bak``, so a later save can tell its own
leftovers from anyone else's files and from a save still running: only files of bnfold's naming whose process
is gone are touched. A backup left by a pair commit that was cut between its two renames is put back when the
model's temporary is still there (the model was never renamed), so the folder holds the old pair again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["temporary_prefix", "backup_path", "clear_stale"]


def temporary_prefix(destination: Path) -> str:
    """The mkstemp prefix of a temporary for *destination* (suffix ``.tmp``)."""
    return f".{destination.name}.{os.getpid()}."


def backup_path(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.{os.getpid()}.bak")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # our own: a save in progress in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but belongs to someone else
    return True


def _leftovers(destination: Path, pattern: str) -> dict[Path, int]:
    """Files beside *destination* matching bnfold's naming for it, with the dead process that made them."""
    expression = re.compile(rf"^\.{re.escape(destination.name)}\.(\d+){pattern}$")
    found: dict[Path, int] = {}
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return found
    for entry in entries:
        match = expression.match(entry.name)
        if match and not _alive(int(match.group(1))) and entry.is_file(follow_symlinks=False):
            found[Path(entry.path)] = int(match.group(1))
    return found


def clear_stale(model: Path, data: Path | None = None) -> list[Path]:
    """Remove dead processes' temporaries for *model* (and *data*), restoring a cut pair commit; the paths."""
    cleared: list[Path] = []
    model_temporaries = _leftovers(model, r"\.[^.]+\.tmp")
    if data is not None:
        for backup, pid in _leftovers(data, r"\.bak").items():
            model_renamed = pid not in model_temporaries.values()
            try:
                if model_renamed or (data.exists() and os.path.samefile(backup, data)):
                    os.unlink(backup)
                else:  # the new data was renamed in, the model was not: the old data goes back under it
                    os.replace(backup, data)
            except OSError:
                continue
            cleared.append(backup)
    for temporary in (*model_temporaries, *(_leftovers(data, r"\.[^.]+\.tmp") if data is not None else ())):
        try:
            os.unlink(temporary)
        except OSError:
            continue
        cleared.append(temporary)
    return cleared
