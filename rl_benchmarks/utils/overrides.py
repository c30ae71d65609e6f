"""Python values written as Hydra override values (``key=<value>``), for overrides built in
code: paths with spaces, commas, quotes or ``${`` reach the config exactly as given."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["hydra_quote", "hydra_value"]


def hydra_quote(value: object) -> str:
    """``str(value)`` as a single-quoted Hydra string that composes back to exactly that
    text: quotes and the backslashes before them (or before the end) are escaped, and so is
    ``${`` (a user's string is never read as an interpolation)."""
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, str(value))
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def hydra_value(value: Any) -> str:
    """A plain Python value (None, bool, number, string, list, dict) in Hydra's override
    grammar; anything else is a ValueError."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 'inf', '-inf' and 'nan' are Hydra floats too
    if isinstance(value, str):
        return "???" if value == "???" else hydra_quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"config value {value!r} ({type(value).__name__}) is not a "
                     f"number, string, list or mapping")
