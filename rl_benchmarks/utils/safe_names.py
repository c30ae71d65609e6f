"""File and folder names made from names that may hold characters a file system refuses.

Extractor names such as ``timm:vit_tiny_patch16_224`` contain ``:``, which Windows (and
some archive and sync tools) refuse in a path. Every folder or file name built from such a
name goes through :func:`safe_name`; JSON records keep the real name.
"""

from __future__ import annotations

import re

# Windows-reserved characters, path separators and control characters.
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def safe_name(name: str) -> str:
    """``name`` with every character a file system may refuse replaced by ``-``
    (``timm:vit_tiny_patch16_224`` -> ``timm-vit_tiny_patch16_224``); trailing dots and
    spaces, which Windows drops, are removed. Names that are already safe are unchanged,
    so existing folders (``iBOTViTBasePANCAN``) keep their names."""
    text = str(name)
    out = _UNSAFE.sub("-", text).rstrip(". ")
    if not out or out in (".", ".."):
        raise ValueError(f"{text!r} cannot be used as a file or folder name")
    return out
