"""``rlbench tile`` and ``tile_slides``' reference layout: the default output folder under
``data_dir`` and the command's exit codes."""

from __future__ import annotations

import numpy as np

from rl_benchmarks.cli.main import run
from rl_benchmarks.slides.tiling import tile_slides

from .conftest import EXPECTED


def test_reference_layout_defaults_to_the_data_dir_coords_folder(tmp_path, layout_slide):
    """layout=reference without output_dir: <data_dir>/preprocessed/slides_classification/
    coords/coords_<tile size>/TCGA/<cohort>/<slide>/coords.npy, as the reference lays out."""
    data = tmp_path / "data"
    s = tile_slides([layout_slide], None, layout="reference", cohort="TCGA_COAD",
                    data_dir=data, qc=False, progress=False)
    root = data / "preprocessed" / "slides_classification" / "coords"
    coords = np.load(root / "coords_224" / "TCGA" / "TCGA_COAD" / layout_slide.name
                     / "coords.npy")
    assert s.ok and s.output_dir == root
    assert {(int(c), int(r)) for _, c, r in coords} == EXPECTED


def test_tile_command_reference_layout_and_exit_codes(tmp_path, layout_slide, capsys):
    data = tmp_path / "data"
    code = run("tile", [f"slides={layout_slide}", "layout=reference", "cohort=CAMELYON16_FULL",
                        f"data_dir={data}", "qc=false", "progress=false"])
    assert code == 0
    assert (data / "preprocessed" / "slides_classification" / "coords" / "coords_224"
            / "CAMELYON16_FULL" / layout_slide.name / "coords.npy").is_file()
    capsys.readouterr()
    assert run("tile", [f"slides={layout_slide}", "progress=false"]) == 2
    assert capsys.readouterr().err.strip() == "rlbench tile: output_dir=<folder> is required"
    assert run("tile", [f"slides={layout_slide}", "layout=reference", f"data_dir={data}",
                        "progress=false"]) == 2
    assert "layout='reference' needs cohort=" in capsys.readouterr().err
