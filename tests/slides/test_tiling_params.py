"""``TilingParams``: the one list of tiling settings (checked, with defaults), and the
keyword arguments of ``tile_slide`` / ``tile_slides`` built from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rl_benchmarks.slides.tiling import TilingParams, tile_slide, tile_slides

from .conftest import EXPECTED


def test_defaults_and_json_form():
    p = TilingParams()
    assert p.as_dict() == {"tile_size": 224, "target_mpp": 0.5, "min_tissue": 0.6,
                           "default_mpp": None, "mpp_tolerance": 0.2, "mask_mpp": 8.0}
    q = TilingParams(tile_size=256.0, target_mpp=np.float32(1), min_tissue=0, default_mpp=1)
    assert type(q.tile_size) is int and q.tile_size == 256
    assert all(type(getattr(q, k)) is float for k in ("target_mpp", "min_tissue", "default_mpp"))
    assert json.loads(json.dumps(q.as_dict())) == q.as_dict()


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("tile_size", 0, "must be a positive integer"),
        ("tile_size", 224.5, "must be a positive integer"),
        ("tile_size", True, "must be a positive integer"),
        ("tile_size", "224", "must be a positive integer"),
        ("target_mpp", 0.0, "must be a positive number"),
        ("target_mpp", math.nan, "must be a positive number"),
        ("min_tissue", 1.5, r"must be a number in \[0, 1\]"),
        ("min_tissue", -0.1, r"must be a number in \[0, 1\]"),
        ("default_mpp", -0.25, "must be a positive number or None"),
        ("mpp_tolerance", -0.01, "must be a number >= 0"),
        ("mask_mpp", math.inf, "must be a positive number"),
        ("mask_mpp", None, "must be a positive number"),
    ],
)
def test_bad_value_is_one_error_naming_the_field(field, value, why):
    with pytest.raises(ValueError, match=rf"^TilingParams\.{field}=.*: {why}$") as err:
        TilingParams(**{field: value})
    assert "\n" not in str(err.value)


def test_build_keeps_params_and_applies_given_keywords():
    base = TilingParams(tile_size=256, min_tissue=0.3, default_mpp=0.25)
    p = TilingParams.build(base, tile_size=None, min_tissue=0.5, default_mpp=None)
    assert (p.tile_size, p.min_tissue, p.default_mpp) == (256, 0.5, 0.25)
    assert TilingParams.build(None, target_mpp=1.0) == TilingParams(target_mpp=1.0)
    with pytest.raises(ValueError, match=r"TilingParams\.min_tissue=2"):
        TilingParams.build(base, min_tissue=2)
    with pytest.raises(TypeError, match="no field"):
        TilingParams.build(None, tilesize=224)


def test_tile_slide_params_equal_keywords(layout_slide):
    by_kw = tile_slide(layout_slide, min_tissue=0.4)
    by_params = tile_slide(layout_slide, params=TilingParams(min_tissue=0.4))
    np.testing.assert_array_equal(by_kw.coords, by_params.coords)
    assert set(map(tuple, by_kw.coords[:, 1:].tolist())) == EXPECTED | {(c, 4) for c in range(5)}
    # a keyword given beside params wins
    mixed = tile_slide(layout_slide, min_tissue=0.6, params=TilingParams(min_tissue=0.4))
    assert set(map(tuple, mixed.coords[:, 1:].tolist())) == EXPECTED
    with pytest.raises(ValueError, match=r"TilingParams\.tile_size=-1"):
        tile_slide(layout_slide, tile_size=-1)


def test_tile_slides_records_params_and_checks_them_first(tmp_path, layout_slide):
    with pytest.raises(ValueError, match=r"TilingParams\.mask_mpp=0"):
        tile_slides([layout_slide], tmp_path / "bad", mask_mpp=0, progress=False)
    assert not (tmp_path / "bad").exists()
    params = TilingParams(min_tissue=0.4)
    s = tile_slides([layout_slide], tmp_path / "out", params=params, qc=False, progress=False)
    assert s.ok and s.n_done == 1
    rec = json.loads((tmp_path / "out" / layout_slide.name / "tiling.json").read_text())
    assert rec["params"] == params.as_dict()
    summary = json.loads((tmp_path / "out" / "tiling_summary.json").read_text())
    assert summary["params"] == params.as_dict()
    # same settings through keywords: skipped; other settings: tiled again
    again = tile_slides([layout_slide], tmp_path / "out", min_tissue=0.4, qc=False,
                        progress=False)
    assert again.n_skipped == 1
    other = tile_slides([layout_slide], tmp_path / "out", qc=False, progress=False)
    assert other.n_done == 1 and other.n_skipped == 0
