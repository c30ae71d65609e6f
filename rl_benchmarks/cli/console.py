"""What a command prints: one header line, a progress bar, the end summary.

Why: the log records of the package (the full config of every experiment, per-fold
selections, per-slide notes) belong in the run folder's files, not on the screen. A command
calls :func:`quiet_logging` first: records of ``rl_benchmarks.*`` and ``rlbench.*`` at
WARNING and above still reach the console (one line each); INFO records do only with
``verbose=true``. It prints :func:`header`, lets its stage draw its progress bar, and ends
with its summary. :func:`save_config` writes the full config as ``config.yaml`` in the run
folder (and prints it with ``verbose=true``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

_LOGGERS = ("rl_benchmarks", "rlbench")
_MARK = "_rlbench_console"

__all__ = ["header", "quiet_logging", "save_config"]


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted (a
    handler bound to one stream breaks once that stream is swapped and closed, as pytest's
    capture and some launchers do)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201 - logging's attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # set by StreamHandler.__init__; always sys.stderr
        pass


def quiet_logging(verbose: bool = False) -> None:
    """Send the package's log records to stderr as one line each: WARNING and above, or
    INFO and above with ``verbose``. Idempotent. The root logger is left alone (no
    ``logging.basicConfig``): records still propagate to pytest's ``caplog`` and to handlers
    a user installed."""
    level = logging.INFO if verbose else logging.WARNING
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        handler = next((h for h in logger.handlers if getattr(h, _MARK, False)), None)
        if handler is None:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            setattr(handler, _MARK, True)
            logger.addHandler(handler)
        handler.setLevel(level)
        if verbose and logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def header(command: str, what: str, where: str | os.PathLike | None = None) -> str:
    """Print (and return) the one header line of ``command``: what it runs, where it writes."""
    line = f"rlbench {command}: {what}" + (f" -> {where}" if where is not None else "")
    print(line, flush=True)
    return line


def save_config(cfg: Any, folder: str | os.PathLike, verbose: bool = False,
                name: str = "config.yaml") -> Path:
    """Write the full (resolved) config as ``<folder>/config.yaml`` (atomically); print it
    too with ``verbose``. Returns the path."""
    from omegaconf import OmegaConf

    from rl_benchmarks.utils.io import write_text

    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: keep it as written
        text = OmegaConf.to_yaml(cfg, resolve=False)
    path = Path(folder) / name
    write_text(path, text)
    if verbose:
        print(f"--- config ({path}) ---\n{text.rstrip()}\n---", flush=True)
    return path
