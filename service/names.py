"""Model names: the pattern every model name matches, and a valid name made from any text.

Standard library only, so the client's ``aeot models register`` names an upload without the
server's packages installed.
"""

from __future__ import annotations

import re
import string

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
_NAME_CHARS = frozenset(string.ascii_lowercase + string.digits + "_-")


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a string matching :data:`NAME_PATTERN`."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def sanitise_name(text: str) -> str:
    """A valid model name from a dataset name (``"Fashion MNIST"`` -> ``"fashion-mnist"``)."""
    chars = [c if c in _NAME_CHARS else "-" for c in text.lower()]
    name = "".join(chars).strip("-_")[:64] or "model"
    return name if is_valid_name(name) else f"m-{name}"[:64]
