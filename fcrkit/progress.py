"""Progress on long work: a bar while training, and a short line as each phase of a long job starts.

Both are shown where a person is watching and stay quiet elsewhere. :func:`enabled` decides, for a
setting of ``None`` (the default of ``Model.train(progress_bar=...)`` and of the commands), in this
order:

1. the environment variable ``FCRKIT_PROGRESS``: ``0`` / ``false`` / ``no`` / ``off`` hides progress,
   ``1`` / ``true`` / ``yes`` / ``on`` shows it (in a log file too);
2. the environment variable ``CI`` (set by continuous-integration services): hidden;
3. a Jupyter notebook (an IPython kernel): shown, as a notebook widget when ``ipywidgets`` is
   installed (``tqdm.auto``), else as text;
4. otherwise shown when standard error is a terminal.

An explicit ``progress_bar=True`` / ``False`` overrides all of these.

Phase lines (:func:`phase`) follow rules 1 and 2 but not 4: they are one line each, so they are
also written when standard error is a pipe or a log file (``fcrkit demo > log 2>&1`` says what it is
doing), where a bar's carriage returns would only clutter.
"""

from __future__ import annotations

import logging
import os
import sys

#: The environment variable that switches progress on or off everywhere.
ENV = "FCRKIT_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")

logger = logging.getLogger("fcrkit")


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (the test ``tqdm.auto`` makes to pick its notebook bar)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _switched(setting: bool | None) -> bool | None:
    """What ``setting``, ``FCRKIT_PROGRESS`` or ``CI`` decide (rules 1-2 of the module docstring); None: neither."""
    if setting is not None:
        return bool(setting)
    forced = os.environ.get(ENV)
    if forced is not None and forced.strip().lower() in _ON + _OFF:
        return forced.strip().lower() in _ON
    if os.environ.get("CI", "").strip().lower() not in _OFF:
        return False
    return None


def enabled(setting: bool | None = None) -> bool:
    """Whether to show the progress bar: ``setting`` if given, else as the module docstring says."""
    switched = _switched(setting)
    if switched is not None:
        return switched
    if in_notebook():
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def phase(message: str, setting: bool | None = None) -> None:
    """Say that a phase of a long job starts: ``fcrkit: <message>`` on standard error when progress is shown.

    Also logged (level DEBUG, logger ``fcrkit``), for programs that collect fcrkit's log instead.
    """
    logger.debug(message)
    if _switched(setting) is not False:  # on unless switched off: a terminal is not needed for one line
        print(f"fcrkit: {message}", file=sys.stderr, flush=True)
