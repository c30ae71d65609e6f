"""``rlbench tile``: a slide without tissue is a failure only, never "done" as well."""

from __future__ import annotations

import json

import numpy as np

from rl_benchmarks.slides.synthetic import write_pyramidal_tiff
from rl_benchmarks.slides.tiling import tile_slides


def test_tile_command_reports_an_empty_slide_as_failed_only(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    rng = np.random.default_rng(0)
    img = np.full((600, 600, 3), 244, np.uint8)
    img[100:500, 100:500] = np.clip(np.array([200, 110, 170]) + rng.normal(0, 25, (400, 400, 3)),
                                    0, 255).astype(np.uint8)
    write_pyramidal_tiff(slides / "tissue.tif", img, mpp=0.5)
    write_pyramidal_tiff(slides / "tiny.tif", np.full((16, 16, 3), 120, np.uint8), mpp=0.5)
    out = tmp_path / "coords"
    summary = tile_slides(slides, out, qc=False, progress=False)
    assert (summary.n_done, summary.n_failed, summary.n_empty) == (1, 1, 1)
    assert not summary.ok
    assert [s for s, _ in summary.failures] == [str(slides / "tiny.tif")]
    record = json.loads((out / "tiling_summary.json").read_text())
    assert (record["n_done"], record["n_failed"]) == (1, 1)
    again = tile_slides(slides, out, qc=False, progress=False)
    assert (again.n_skipped, again.n_failed, again.n_done) == (1, 1, 0)
