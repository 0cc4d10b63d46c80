"""``-q`` / ``-v``: one meaning on every command.

- ``-q, --quiet``: errors only. No report table, no summary, no warnings, no progress bar; the exit code
  and the ``Error: ...`` line (standard error) still say what went wrong; ``--json`` is still written.
- ``-v, --verbose``: every row. Lists that are grouped or cut when long (refused sites, BatchNormalizations,
  compared tensors) are printed one per line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

QUIET_HELP = "Errors only: no report, summary, warnings or progress bar (--json is still written)."
VERBOSE_HELP = "Every row: no grouping or cutting of long lists."


def verbosity_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``quiet`` and ``verbose`` flags."""
    options = [click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP),
               click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)
