"""Heatmaps: tile geometry against OpenSlide's DeepZoom, the planted-signal test, the CLI."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from rl_benchmarks.reports.heatmap import HeatmapError, draw_heatmap
from rl_benchmarks.slides.geometry import deepzoom_level_count, grid_coords, tile_boxes_level0
from rl_benchmarks.slides.synthetic import write_pyramidal_tiff


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    """A 700×452 px random slide (odd sizes exercise DeepZoom's rounding)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (452, 700, 3), dtype=np.uint8)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("odd") / "odd.tif", img, 0.5,
                                tile_size=128, compression="deflate")


def test_tile_boxes_match_deepzoom(odd_slide):
    slide = openslide.OpenSlide(str(odd_slide))
    for tile_size in (64, 100):
        dz = DeepZoomGenerator(slide, tile_size=tile_size, overlap=0)
        assert deepzoom_level_count(*slide.dimensions) == dz.level_count
        coords = np.array([(lvl, c, r) for lvl in range(dz.level_count - 4, dz.level_count)
                           for c in range(dz.level_tiles[lvl][0]) for r in range(dz.level_tiles[lvl][1])])
        boxes = tile_boxes_level0(coords, tile_size, *slide.dimensions)
        for (lvl, c, r), (x0, y0, x1, y1) in zip(coords, boxes):
            (lx, ly), _, _ = dz.get_tile_coordinates(int(lvl), (int(c), int(r)))
            tw, th = dz.get_tile_dimensions(int(lvl), (int(c), int(r)))
            ds = 2 ** (dz.level_count - 1 - int(lvl))
            assert (x0, y0) == (lx, ly)
            assert (x1, y1) == (min(lx + tw * ds, slide.dimensions[0]), min(ly + th * ds, slide.dimensions[1]))
    grid = grid_coords(*slide.dimensions, 64)
    assert len(grid) == (700 // 64) * (452 // 64) and (grid[:, 0] == dz.level_count - 1).all()


def test_overlay_puts_each_score_on_its_tile(odd_slide, tmp_path):
    slide = openslide.OpenSlide(str(odd_slide))
    dz = DeepZoomGenerator(slide, tile_size=64, overlap=0)
    full = grid_coords(*slide.dimensions, 64)
    coarse = grid_coords(*slide.dimensions, 64, level=dz.level_count - 2)[:2]
    coords = np.concatenate([full[::3], coarse])
    scores = np.arange(len(coords), dtype=float)
    hm = draw_heatmap(odd_slide, coords, scores, tmp_path / "hm.png", tile_size=64, thumbnail_size=350)
    thumb = np.asarray(slide.get_thumbnail((350, 350)).convert("RGB"))
    assert np.array_equal(hm.thumbnail, thumb)
    assert hm.overlay.shape == thumb.shape[:2]
    sx = thumb.shape[1] / slide.dimensions[0]
    sy = thumb.shape[0] / slide.dimensions[1]
    # Tile centres carry their score; coarse tiles (drawn last, higher scores) cover fine ones.
    for i in np.argsort(scores):
        lvl, c, r = map(int, coords[i])
        (lx, ly), _, _ = dz.get_tile_coordinates(lvl, (c, r))
        tw, th = dz.get_tile_dimensions(lvl, (c, r))
        ds = 2 ** (dz.level_count - 1 - lvl)
        cx, cy = int((lx + tw * ds / 2) * sx), int((ly + th * ds / 2) * sy)
        covering = [j for j in range(len(coords)) if j > i and coords[j, 0] < coords[i, 0]]
        if not covering:
            assert hm.overlay[cy, cx] == scores[i]
    assert np.isnan(hm.overlay).any() and (hm.overlay[~np.isnan(hm.overlay)] >= 0).all()
    with Image.open(hm.path) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_bad_heatmap_input(odd_slide, tmp_path):
    coords = grid_coords(700, 452, 64)
    with pytest.raises(HeatmapError, match="scores"):
        draw_heatmap(odd_slide, coords, np.zeros(3), tmp_path / "x.png", tile_size=64)
    with pytest.raises(HeatmapError, match="outside the .* tile grid"):
        draw_heatmap(odd_slide, coords + [0, 20, 0], np.zeros(len(coords)), tmp_path / "x.png", tile_size=64)
    with pytest.raises(HeatmapError, match="no such slide"):
        draw_heatmap(tmp_path / "nope.tif", coords, np.zeros(len(coords)), tmp_path / "x.png")


def _tile_features(slide_path, coords, tile_size) -> np.ndarray:
    """Hand-made colour features of each tile: mean and std optical density, dark fraction."""
    slide = openslide.OpenSlide(str(slide_path))
    dz = DeepZoomGenerator(slide, tile_size=tile_size, overlap=0)
    out = []
    for lvl, c, r in coords:
        a = np.asarray(dz.get_tile(int(lvl), (int(c), int(r))), np.float32) / 255.0
        od = -np.log(np.clip(a, 1 / 255, 1))
        out.append(np.r_[od.mean((0, 1)), od.std((0, 1)), (od.sum(-1) > 1.5).mean()])
    return np.asarray(out)


def test_planted_tiles_get_the_highest_heatmap_scores(small_cohort, tmp_path):
    """Weak supervision (slide labels only) + heatmap: the top tiles are the planted ones."""
    from sklearn.linear_model import LogisticRegression

    ts = 64
    frame = small_cohort.frame
    feats = {}
    for _, row in frame.iterrows():
        coords = grid_coords(768, 768, ts)
        feats[row.slide_id] = (coords, _tile_features(row.slide_path, coords, ts))
    labels = dict(zip(frame.slide_id, frame.label))
    positives = [s for s in frame.slide_id if labels[s] == 1]
    assert len(positives) == 3
    for test_id in positives:
        train = [s for s in frame.slide_id if s != test_id]
        x = np.concatenate([feats[s][1] for s in train])
        y = np.concatenate([[labels[s]] * len(feats[s][1]) for s in train])
        mu, sd = x.mean(0), x.std(0) + 1e-8
        clf = LogisticRegression(max_iter=2000).fit((x - mu) / sd, y)
        coords, f = feats[test_id]
        scores = clf.decision_function((f - mu) / sd)
        planted = small_cohort.tile_labels(test_id, coords, ts, min_fraction=0.5)
        k = int(planted.sum())
        assert 5 <= k <= len(coords) // 2
        chance = planted.mean()
        precision = planted[np.argsort(-scores)[:k]].mean()
        assert precision >= 0.6 and precision >= 3 * chance, (test_id, precision, chance)

        # A control that must fail the test's bar: shuffled scores.
        shuffled = np.random.default_rng(0).permutation(scores)
        assert planted[np.argsort(-shuffled)[:k]].mean() < 0.6
        if test_id != positives[0]:
            continue

        # The same holds on the drawn heatmap: the hottest pixels lie on planted islands.
        row = frame[frame.slide_id == test_id].iloc[0]
        hm = draw_heatmap(row.slide_path, coords, scores, tmp_path / f"{test_id}.png", tile_size=ts,
                          thumbnail_size=192)
        mask = small_cohort.planted_mask(test_id)  # 1/8 resolution = 96 px
        mask_t = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            hm.overlay.shape[::-1], Image.NEAREST)) > 0
        ov = np.nan_to_num(hm.overlay, nan=-np.inf)
        hot = ov >= np.quantile(ov, 1 - mask_t.mean())
        assert mask_t[hot].mean() >= 0.5 and mask_t[hot].mean() >= 3 * mask_t.mean()


def test_cli_heatmap_scores_a_trained_abmil(small_cohort, tmp_path, capsys):
    import torch

    from rl_benchmarks.cli.main import main
    from rl_benchmarks.models.slide_models import REFERENCE_MODEL_KWARGS, create_slide_model

    row = small_cohort.frame.iloc[0]
    coords = grid_coords(768, 768, 64)
    rng = np.random.default_rng(0)
    features = np.concatenate([coords, rng.normal(size=(len(coords), 8))], 1).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    torch.manual_seed(0)
    model = create_slide_model("abmil", in_features=8, out_features=1, **REFERENCE_MODEL_KWARGS["abmil"])
    torch.save(model.state_dict(), tmp_path / "abmil.pt")
    out = tmp_path / "hm" / "abmil.png"
    code = main(["heatmap", f"slide_path={row.slide_path}", f"features_path={tmp_path / 'features.npy'}",
                 "model=abmil", f"state_dict_path={tmp_path / 'abmil.pt'}", "tile_size=64",
                 f"output={out}", "thumbnail_size=256"])
    assert code == 0, capsys.readouterr().err
    assert out.is_file() and "heatmap:" in capsys.readouterr().out
    saved = np.load(out.with_name("abmil_scores.npy"))
    with torch.no_grad():
        want = model.tile_scores(torch.from_numpy(features)[None], None)[0].numpy()
    np.testing.assert_allclose(saved, want, rtol=1e-5, atol=1e-8)
    assert saved.sum() == pytest.approx(1.0, abs=1e-4)  # attention weights over the tiles

    # User errors: one line, exit code 1.
    code = main(["heatmap", f"slide_path={row.slide_path}", f"features_path={tmp_path / 'features.npy'}",
                 "model=abmil", "tile_size=64", f"output={out}"])
    assert code == 2 and "state_dict_path is required" in capsys.readouterr().err
    torch.save(create_slide_model("abmil", in_features=5, out_features=1).state_dict(), tmp_path / "bad.pt")
    code = main(["heatmap", f"slide_path={row.slide_path}", f"features_path={tmp_path / 'features.npy'}",
                 "model=abmil", f"state_dict_path={tmp_path / 'bad.pt'}", "tile_size=64", f"output={out}"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.pt: does not fit model abmil" in err and "Traceback" not in err


def test_cli_heatmap_from_given_scores(small_cohort, tmp_path, capsys):
    from rl_benchmarks.cli.main import main

    row = small_cohort.frame.iloc[0]
    coords = grid_coords(768, 768, 128)
    np.save(tmp_path / "coords.npy", coords)
    np.save(tmp_path / "scores.npy", np.linspace(0, 1, len(coords)))
    code = main(["heatmap", f"slide_path={row.slide_path}", f"coords_path={tmp_path / 'coords.npy'}",
                 f"scores_path={tmp_path / 'scores.npy'}", "tile_size=128", f"output={tmp_path / 'h.png'}"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "h.png").is_file()


@pytest.mark.real_data
def test_heatmap_on_a_real_svs(real_data, tmp_path):
    """CMU-1-Small-Region.svs (Aperio, 2220×2967): tiles land where DeepZoom reads them."""
    path = real_data / "slides" / "svs" / "CMU-1-Small-Region.svs"
    slide = openslide.OpenSlide(str(path))
    dz = DeepZoomGenerator(slide, tile_size=224, overlap=0)
    coords = grid_coords(*slide.dimensions, 224)
    # Score = darkness of the tile read through DeepZoom (tissue is darker than glass).
    scores = np.array([255 - np.asarray(dz.get_tile(int(lvl), (int(c), int(r)))).mean()
                       for lvl, c, r in coords])
    hm = draw_heatmap(path, coords, scores, tmp_path / "cmu.png", tile_size=224, thumbnail_size=512)
    dark = 255 - hm.thumbnail.astype(float).mean(-1)
    sx = hm.thumbnail.shape[1] / slide.dimensions[0]
    sy = hm.thumbnail.shape[0] / slide.dimensions[1]

    def box_means(shift: int) -> np.ndarray:
        """Thumbnail darkness inside each tile's DeepZoom box (shifted by ``shift`` tiles)."""
        out = []
        for lvl, c, r in coords:
            (lx, ly), _, _ = dz.get_tile_coordinates(int(lvl), (int(c), int(r)))
            x0, y0 = int((lx + shift * 224) * sx), int(ly * sy)
            x1, y1 = int((lx + (shift + 1) * 224) * sx), int((ly + 224) * sy)
            out.append(dark[y0:y1, max(0, x0):max(1, x1)].mean() if x1 <= dark.shape[1] else np.nan)
            if shift == 0:  # the overlay holds the tile's score at the box centre
                assert hm.overlay[(y0 + y1) // 2, (x0 + x1) // 2] == pytest.approx(
                    scores[len(out) - 1], rel=1e-6)
        return np.asarray(out)

    aligned, shifted = box_means(0), box_means(1)
    ok = ~np.isnan(shifted)
    r_aligned = np.corrcoef(scores, aligned)[0, 1]
    r_shifted = np.corrcoef(scores[ok], shifted[ok])[0, 1]
    assert r_aligned > 0.95 and r_aligned > r_shifted + 0.05, (r_aligned, r_shifted)
    with Image.open(hm.path) as im:
        assert im.size[0] > 500


def test_heatmaps_from_a_cv_run(small_cohort, tmp_path):
    """Each chosen slide is drawn by the model of the outer fold where it was a test slide."""
    import pandas as pd
    import torch

    from rl_benchmarks.models.slide_models import create_slide_model
    from rl_benchmarks.reports.heatmap import heatmaps_from_cv
    from rl_benchmarks.utils.io import write_csv

    frame = small_cohort.frame
    coords = grid_coords(768, 768, 128)
    rng = np.random.default_rng(1)
    slides, exp = {}, tmp_path / "exp"
    for row in frame.itertuples():
        feats = np.concatenate([coords, rng.normal(size=(len(coords), 4))], 1).astype(np.float32)
        np.save(tmp_path / f"{row.slide_id}.npy", feats)
        slides[row.slide_id] = (row.slide_path, tmp_path / f"{row.slide_id}.npy")
    for k in (1, 2):
        key = f"repeat_1_split_{k}"
        torch.manual_seed(k)
        # Split 1's model has another input size: using it for a split-2 slide would fail.
        net = create_slide_model("abmil", in_features=4 if k == 2 else 5, out_features=1)
        (exp / "models").mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), exp / "models" / f"{key}.pt")
        part = frame.iloc[(k - 1) * 3: k * 3]
        write_csv(exp / "predictions" / f"{key}.csv", pd.DataFrame({
            "fold": key, "slide_id": part.slide_id, "patient_id": part.patient_id,
            "label": part.label, "score": [0.1 * k, 5.0 * (k == 2), -1.0]}), index=False)
    out = heatmaps_from_cv(exp, slides, "abmil", tmp_path / "heatmaps", use_reference_kwargs=False,
                           tile_size=128, max_slides=2, thumbnail_size=200)
    ranked = [frame.slide_id.iloc[4], frame.slide_id.iloc[3]]  # scores 5.0 and 0.2, both split 2
    assert [p.name for p in out] == [f"{s}_abmil.png" for s in ranked]
    assert all(p.is_file() for p in out)
    # The third slide (score 0.1) is a split-1 test slide, so split 1's model is loaded.
    with pytest.raises(HeatmapError, match="repeat_1_split_1.pt: does not fit model abmil"):
        heatmaps_from_cv(exp, slides, "abmil", tmp_path / "h3", use_reference_kwargs=False,
                         tile_size=128, max_slides=3, thumbnail_size=200)
    with pytest.raises(HeatmapError, match="none of the given slides"):
        heatmaps_from_cv(exp, {"nope": slides[ranked[0]]}, "abmil", tmp_path / "h2",
                         use_reference_kwargs=False)
