"""The synthetic H&E cohort: structure, determinism, the planted signal, resumability."""

from __future__ import annotations

import numpy as np
import openslide
import pandas as pd
import pytest
from openslide.deepzoom import DeepZoomGenerator

from rl_benchmarks.demo.synthetic import (
    COHORT_COLUMNS,
    generate_cohort,
    load_cohort,
    render_slide,
)
from rl_benchmarks.slides.geometry import grid_coords
from rl_benchmarks.utils.io import sha256_file


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The demo's default design (24 slides, 20 patients) with tiny 256-px slides."""
    return generate_cohort(tmp_path_factory.mktemp("demo"), slide_size=256, seed=0, progress=False)


def test_cohort_design(cohort):
    frame = pd.read_csv(cohort.csv_path)
    assert list(frame.columns) == COHORT_COLUMNS
    assert len(frame) == 24 and frame["patient_id"].nunique() == 20
    assert (frame.groupby("patient_id").size() == 2).sum() == 4
    per_patient = frame.groupby("patient_id")[["label", "time", "event"]].nunique()
    assert (per_patient == 1).all().all()  # labels and survival are patient-level
    patients = frame.drop_duplicates("patient_id")
    assert sorted(patients["label"].value_counts().to_dict().items()) == [(0, 10), (1, 10)]
    assert (frame["time"] > 0).all() and set(frame["event"]) == {0, 1}
    # Survival follows the planted signal: positive patients die sooner (Harrell's C of the label).
    from lifelines.utils import concordance_index

    assert concordance_index(patients["time"], -patients["label"], patients["event"]) > 0.65
    # Planted islands exactly in the positive slides; pen marks on some slides of both classes.
    truth = cohort.truth.set_index("slide_id")
    assert ((truth["planted_fraction"] > 0) == (truth["label"] == 1)).all()
    pens = truth[truth["pen"] != "none"]
    assert set(pens["pen"]) == {"blue", "green"} and set(pens["label"]) == {0, 1}
    for path in frame["slide_path"]:
        slide = openslide.OpenSlide(path)
        assert slide.dimensions == (256, 256)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    reopened = load_cohort(cohort.root)
    pd.testing.assert_frame_equal(reopened.frame, frame)


def test_pixels_look_like_he_and_carry_the_signal():
    rgb, planted, tissue = render_slide(640, 640, 0.2, np.random.default_rng(3))
    assert rgb.shape == (640, 640, 3) and rgb.dtype == np.uint8
    assert 0.3 < tissue.mean() < 0.7
    assert 0.12 < planted[tissue].mean() < 0.45 and not planted[~tissue].any()
    bg = rgb[~tissue].astype(int)
    assert np.median(bg, 0).min() > 215  # white background
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    rest = tissue & ~planted
    # Pink stroma: red above green; purple nuclei: dark pixels with blue above green.
    assert np.median(r[rest] - g[rest]) > 30
    dark = (r + g + b) < 400
    assert ((b > g) & dark & tissue).sum() > 500
    # The planted islands are darker (denser nuclei) than the rest of the tissue.
    od = -np.log(np.clip(rgb.astype(float) / 255, 1 / 255, 1)).sum(-1)
    assert od[planted].mean() > 1.25 * od[rest].mean()
    # Blue ink: strongly blue pixels exist with a pen and not without one.
    assert ((b - r > 80) & (b - g > 60)).sum() < 50
    ink, _, _ = render_slide(640, 640, 0.2, np.random.default_rng(3), pen="blue")
    r, g, b = (ink[..., c].astype(int) for c in range(3))
    assert ((b - r > 80) & (b - g > 60)).sum() > 500
    rgb0, planted0, _ = render_slide(640, 640, 0.0, np.random.default_rng(3))
    assert not planted0.any()


def test_planted_tiles_are_dark_in_the_written_slide(cohort, tmp_path):
    """Ground-truth tile labels line up with the pixels that OpenSlide reads."""
    c = generate_cohort(tmp_path, n_patients=2, n_slides=2, slide_size=768, seed=4, progress=False)
    row = c.frame[c.frame["label"] == 1].iloc[0]
    slide = openslide.OpenSlide(row.slide_path)
    dz = DeepZoomGenerator(slide, 64, 0)
    coords = grid_coords(768, 768, 64)
    planted = c.tile_labels(row.slide_id, coords, 64, min_fraction=0.9)
    free = c.tile_labels(row.slide_id, coords, 64, min_fraction=1e-9) == 0
    dark = np.array([255 - np.asarray(dz.get_tile(int(lv), (int(x), int(y)))).mean()
                     for lv, x, y in coords])
    assert planted.sum() >= 3
    assert dark[planted].min() > np.median(dark[free])
    negative = c.frame[c.frame["label"] == 0].iloc[0]
    assert not c.tile_labels(negative.slide_id, coords, 64, min_fraction=1e-9).any()


def test_deterministic_and_resumable(tmp_path):
    kw = dict(n_patients=2, n_slides=3, slide_size=320, progress=False)
    a = generate_cohort(tmp_path / "a", seed=7, **kw)
    b = generate_cohort(tmp_path / "b", seed=7, **kw)
    c = generate_cohort(tmp_path / "c", seed=8, **kw)
    cols = [col for col in COHORT_COLUMNS if col != "slide_path"]
    pd.testing.assert_frame_equal(a.frame[cols], b.frame[cols])
    hashes = {k: [sha256_file(p) for p in x.frame["slide_path"]] for k, x in zip("abc", (a, b, c))}
    assert hashes["a"] == hashes["b"] and hashes["a"] != hashes["c"]

    # A re-run keeps finished slides and regenerates a missing one identically.
    slides = sorted((tmp_path / "a" / "slides").glob("*.tif"))
    mtime = {p.name: p.stat().st_mtime_ns for p in slides}
    slides[-1].unlink()
    again = generate_cohort(tmp_path / "a", seed=7, **kw)
    assert [sha256_file(p) for p in again.frame["slide_path"]] == hashes["a"]
    assert all(p.stat().st_mtime_ns == mtime[p.name] for p in slides[:-1])
    # Other parameters in the same folder: everything is made again.
    resized = generate_cohort(tmp_path / "a", seed=7, **{**kw, "slide_size": 256})
    assert openslide.OpenSlide(resized.frame["slide_path"].iloc[0]).dimensions == (256, 256)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_slides=50"):
        generate_cohort(tmp_path, n_patients=20, n_slides=50, progress=False)
    with pytest.raises(ValueError, match="slide_size=100"):
        generate_cohort(tmp_path, slide_size=100, progress=False)
    with pytest.raises(ValueError, match="pen='red'"):
        render_slide(128, 128, 0.0, np.random.default_rng(0), pen="red")
