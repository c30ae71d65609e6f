"""Any tile dataset laid out as ``<root>/<class>/<image>`` (torchvision ImageFolder)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from rl_benchmarks.datasets._tables import IMAGE_EXTENSIONS
from rl_benchmarks.datasets.validation import (
    CohortError,
    MissingFileError,
    check_label_spellings,
    require_file,
)


def load_image_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Tiles of an ImageFolder tree, with the NCT-CRC columns ``image_path, image_id,
    label, center_id`` plus ``class_name``; ``frame.attrs["classes"]`` holds the class
    names in code order.

    * Classes are the sub-folders holding at least one image, sorted by name (as
      torchvision does), unless ``classes`` gives the order; a folder not in ``classes``
      is an error.
    * ``image_id`` is the path relative to ``root`` without its extension
      (``ADI/ADI-AAQEFMRI``): unique even when two classes reuse a file name.
    """
    root = require_file(root, "ImageFolder root")
    if not root.is_dir():
        raise MissingFileError(f"ImageFolder root is not a folder: {root}")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in (extensions or IMAGE_EXTENSIONS)}
    files = sorted(
        p for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
        for p in d.rglob("*") if p.is_file() and p.suffix.lower() in exts
    )
    if not files:
        raise MissingFileError(f"no images ({', '.join(sorted(exts))}) under {root}/<class>/")
    found = sorted({p.relative_to(root).parts[0] for p in files})
    check_label_spellings(pd.Series(found), root, "class folder")
    if classes is None:
        classes = found
    else:
        classes = [str(c) for c in classes]
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise CohortError(f"{root}: class folder(s) {unknown} are not in classes={classes}")
    code = {c: i for i, c in enumerate(classes)}
    rel = [p.relative_to(root) for p in files]
    frame = pd.DataFrame(
        {
            "image_path": [str(p) for p in files],
            "image_id": [r.with_suffix("").as_posix() for r in rel],
            "label": [code[r.parts[0]] for r in rel],
            "center_id": None,
            "class_name": [r.parts[0] for r in rel],
        }
    )
    frame = frame.set_index("image_id", drop=False).rename_axis(None)
    frame.attrs["classes"] = list(classes)
    return frame
