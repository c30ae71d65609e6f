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


# --------------------------------------------------------------------------------------
# Short, readable names of experiments and their pictures (task · model · extractor)
# --------------------------------------------------------------------------------------
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: the longest file stem :func:`file_stem` makes (a short hash suffix included)
MAX_STEM = 80


def short_hash(text: str, n: int = 6) -> str:
    """The first ``n`` hex digits of the sha256 of ``text``: a stable, short disambiguator
    (e.g. of a cohort's absolute path, which itself never enters a name)."""
    import hashlib

    return hashlib.sha256(str(text).encode()).hexdigest()[:n]


def file_stem(label: str, max_len: int = MAX_STEM) -> str:
    """A file stem made of ``[A-Za-z0-9._-]`` only from a display label:
    ``"crc · ABMIL · iBOTViTBasePANCAN"`` -> ``crc_ABMIL_iBOTViTBasePANCAN``. A label longer
    than ``max_len`` is cut and gets a hash of the whole label, so cut labels stay distinct."""
    stem = _SLUG_UNSAFE.sub("_", str(label)).strip("._-") or "run"
    if len(stem) > max_len:
        stem = f"{stem[: max_len - 7].rstrip('._-')}-{short_hash(label)}"
    return stem


def unique_labels(labels: dict, keys: dict | None = None) -> dict:
    """``{item: label}`` with every label shared by several items made distinct by a short
    hash suffix, ``"crc [3fa2c1]"``, hashed from ``keys[item]`` (default ``str(item)``):
    what tells the items apart (a cohort path, an experiment folder), without showing it."""
    keys = keys or {}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    out = {}
    for item, label in labels.items():
        if counts[label] > 1:
            label = f"{label} [{short_hash(str(keys.get(item, item)))}]"
        out[item] = label
    return out


def unique_stems(labels: dict, keys: dict | None = None, max_len: int = MAX_STEM) -> dict:
    """``{item: file stem}`` (:func:`file_stem`) unique within ``labels``: stems that two
    items share (two labels that only differ in unsafe characters) get a short hash of
    ``keys[item]`` (default the label)."""
    keys = keys or {}
    stems = {item: file_stem(label, max_len) for item, label in labels.items()}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {item: (f"{stem}-{short_hash(str(keys.get(item, labels[item])))}" if counts[stem] > 1
                   else stem) for item, stem in stems.items()}
