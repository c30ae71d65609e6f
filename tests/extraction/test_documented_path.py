"""The documented extraction path works as written (issue S): ``data_dir=`` on the command
line, ``coords_dir=`` from ``rlbench tile``, CSV slides without labels, safe folder names."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_benchmarks.cli.main import run
from rl_benchmarks.extraction.slides import SlideInput, check_coords_settings, list_slides
from rl_benchmarks.utils.safe_names import safe_name

REPO = Path(__file__).resolve().parents[2]
TINY = ["feature_extractor.pretrained=false", "+feature_extractor.depth=1",
        "+feature_extractor.embed_dim=32", "+feature_extractor.num_heads=2"]
TIMM_TINY = ["feature_extractor=timm", "feature_extractor.name=timm:vit_tiny_patch16_224",
             "feature_extractor.pretrained=false", "+feature_extractor.depth=1"]
FAST = ["num_workers=0", "batch_size=8", "progress=false"]


def _ref_data(root: Path):
    """``RefData`` of tests/datasets/conftest.py (the reference-layout builder), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "_rlb_ref_layouts", REPO / "tests" / "datasets" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RefData(root)


@pytest.fixture
def no_data_root(tmp_path, monkeypatch) -> Path:
    """No data root from the environment or a conf.yaml in the working folder: only the
    ``data_dir=`` key can give it. Returns the (empty) root to pass."""
    monkeypatch.delenv("RLB_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    return root


# ----------------------------------------------------------------------------- data_dir=


def _nct_crc(root: Path) -> int:
    """A tiny NCT-CRC layout under ``root``; returns its number of tiles."""
    counts = {"TRAIN": {"ADI": 3, "TUM": 3}, "VALID": {"ADI": 2, "TUM": 2}}
    _ref_data(root).nct_crc(counts)
    return sum(n for per_class in counts.values() for n in per_class.values())


@pytest.mark.parametrize("extractor,folder", [(TINY, "iBOTViTBasePANCAN"),
                                              (TIMM_TINY, "timm-vit_tiny_patch16_224")])
def test_extract_tiles_honours_data_dir_key(no_data_root, extractor, folder):
    n = _nct_crc(no_data_root)
    with pytest.raises(ValueError, match="data_dir is not set"):  # the control: no root
        run("extract-tiles", ["tile_dataset=nct_crc", *extractor, *FAST])
    assert run("extract-tiles", ["tile_dataset=nct_crc", f"data_dir={no_data_root}",
                                 *extractor, *FAST]) == 0
    features = no_data_root / "preprocessed" / "tiles_classification" / "features"
    out = features / folder / "NCT-CRC_FULL"
    assert [p.name for p in features.iterdir()] == [folder]  # no name with ':' on disk
    assert np.load(out / "tile_features.npy").shape[0] == n
    record = json.loads((out / "rlbenchmarks_extraction_params.json").read_text())
    real = "timm:vit_tiny_patch16_224" if folder.startswith("timm") else "iBOTViTBasePANCAN"
    assert record["extractor"]["name"] == real  # the record keeps the real name


def test_finetune_honours_data_dir_key(no_data_root, tmp_path, capsys):
    _nct_crc(no_data_root)
    out = tmp_path / "ft"
    args = ["tile_dataset=nct_crc", "pretrained=false", "vit.hidden_size=32",
            "vit.num_hidden_layers=1", "vit.num_attention_heads=2", "image_size=32",
            "num_epochs=1", "batch_size=4", "num_workers=0", "mode=linear", f"output_dir={out}"]
    with pytest.raises(ValueError, match="data_dir is not set"):
        run("finetune", args)
    assert run("finetune", [*args, f"data_dir={no_data_root}"]) == 0
    result = json.loads((out / "results.json").read_text())["result"]
    assert len(result["classes"]) == 2  # ADI and TUM
    # NCT-CRC: test = the 4 VAL-7K tiles; the 6 training tiles are split 3/3 train/valid.
    assert "train/valid/test = 3/3/4" in capsys.readouterr().out


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_rlb_tool_{name}", REPO / "tools" / "extract_features" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extract_slide_features_tool_honours_data_dir_key(no_data_root, slide_dir, capsys):
    ref = _ref_data(no_data_root)
    ids = ref.tcga_slides("TCGA_COAD", {"TCGA-AA-0001": 1}, with_slide_file=True)
    slide_files = list((no_data_root / "raw").rglob("*.svs"))
    assert len(slide_files) == 1 and slide_files[0].name == f"{ids[0]}.svs"
    shutil.copyfile(slide_dir / "a.tif", slide_files[0])  # a real (generic TIFF) slide
    ref_feats = ref.features / "TCGA" / "TCGA_COAD"
    shutil.rmtree(ref_feats)  # the builder's stand-in features: we extract our own
    args = ["slide_dataset=tcga_coad", *TIMM_TINY, *FAST]
    assert _tool("extract_slide_features").main(args) != 0  # the control: no root
    assert "data_dir is not set" in capsys.readouterr().err
    assert _tool("extract_slide_features").main([*args, f"data_dir={no_data_root}"]) == 0
    out = (no_data_root / "preprocessed" / "slides_classification" / "features"
           / "timm-vit_tiny_patch16_224" / "TCGA" / "TCGA_COAD" / slide_files[0].name)
    feats = np.load(out / "features.npy")
    assert feats.shape[1] == 3 + 192 and len(feats) == len(np.load(out / "coords.npy")) > 0
    assert json.loads((out / "features.json").read_text())["extractor"]["name"] == \
        "timm:vit_tiny_patch16_224"


# ----------------------------------------------------------------------------- coords_dir=


def _tile(slides: Path, out: Path, *extra: str) -> None:
    assert run("tile", [f"slides={slides}", f"output_dir={out}", "qc=false", "progress=false",
                        *extra]) == 0


def _two_slides(slide_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a.tif", "c.tif"):
        shutil.copyfile(slide_dir / name, folder / name)
    return folder


def test_coords_dir_reuses_rlbench_tile_output(slide_dir, tmp_path, caplog):
    slides = _two_slides(slide_dir, tmp_path)
    only_a = tmp_path / "only_a"
    only_a.mkdir()
    shutil.copyfile(slide_dir / "a.tif", only_a / "a.tif")
    coords = tmp_path / "coords"
    _tile(only_a, coords, "min_tissue=0.3")  # other than extract-slides' 0.6: visibly reused
    out = tmp_path / "feats"
    with caplog.at_level(logging.WARNING):
        assert run("extract-slides", [f"slides={slides}", f"coords_dir={coords}",
                                      f"output_dir={out}", *TINY, *FAST]) == 0
    tiled = np.load(coords / "a.tif" / "coords.npy")
    feats = np.load(out / "a.tif" / "features.npy")
    np.testing.assert_array_equal(feats[:, :3], tiled.astype(np.float32))
    assert not (out / "a.tif" / "coords.npy").exists()  # not tiled again
    record = json.loads((out / "a.tif" / "features.json").read_text())
    assert record["coords_path"] == str(coords / "a.tif" / "coords.npy")
    # c.tif is not in coords_dir: tiled on the fly, with a warning naming it
    assert (out / "c.tif" / "coords.npy").is_file() and (out / "c.tif" / "features.npy").is_file()
    warned = [r.getMessage() for r in caplog.records if "coords_dir" in r.getMessage()]
    assert len(warned) == 1 and "c.tif" in warned[0] and "a.tif" not in warned[0]
    # without coords_dir the extractor's own tiling (min_tissue 0.6) keeps fewer tiles
    own = tmp_path / "own"
    assert run("extract-slides", [f"slides={only_a}", f"output_dir={own}", *TINY, *FAST]) == 0
    assert len(np.load(own / "a.tif" / "coords.npy")) < len(tiled)


@pytest.mark.parametrize("tiling,named", [(["tile_size=256"], "tile_size=256"),
                                          (["target_mpp=1.0"], "mpp=1.0")])
def test_coords_dir_made_at_other_settings_is_an_error(slide_dir, tmp_path, tiling, named):
    only_a = tmp_path / "only_a"
    only_a.mkdir()
    shutil.copyfile(slide_dir / "a.tif", only_a / "a.tif")
    coords = tmp_path / "coords"
    _tile(only_a, coords, *tiling)
    out = tmp_path / "feats"
    with pytest.raises(ValueError) as err:
        run("extract-slides", [f"slides={only_a}", f"coords_dir={coords}", f"output_dir={out}",
                               *TINY, *FAST])
    message = str(err.value)
    assert "\n" not in message and named in message
    assert "tile_size=224, mpp=0.5" in message  # the extractor's setting, named too
    assert not (out / "a.tif" / "features.npy").exists()


def test_check_coords_settings_reads_tiling_json(tmp_path):
    folder = tmp_path / "s.tif"
    folder.mkdir()
    np.save(folder / "coords.npy", np.zeros((2, 3), np.int64))
    slide = SlideInput(tmp_path / "s.tif", "s.tif", folder / "coords.npy")
    check_coords_settings([slide], 224, 0.5)  # no tiling.json (reference coords): accepted
    (folder / "tiling.json").write_text(json.dumps({"tile_size": 224, "target_mpp": 0.5}))
    check_coords_settings([slide], 224, 0.5)
    with pytest.raises(ValueError, match=r"tile_size=224, mpp=0\.5.*tile_size=256, mpp=0\.5"):
        check_coords_settings([slide], 256, 0.5, "DinoChenBRCA")
    with pytest.raises(ValueError, match=r"mpp=0\.5, but X extracts at tile_size=224, mpp=1"):
        check_coords_settings([slide], 224, 1.0, "X")


def test_coords_dir_that_is_not_a_folder_is_an_error(slide_dir, tmp_path):
    with pytest.raises(ValueError, match="coords_dir=.*not a folder"):
        run("extract-slides", [f"slides={slide_dir / 'a.tif'}", f"coords_dir={tmp_path / 'no'}",
                               f"output_dir={tmp_path / 'o'}", *TINY, *FAST])


# ----------------------------------------------------------------------------- CSV slides


@pytest.mark.parametrize("mode", ["slides", "slide_dataset"])
def test_csv_extraction_needs_only_slide_path(no_data_root, slide_dir, tmp_path, mode, capsys):
    csv = tmp_path / "cohort.csv"
    pd.DataFrame({"slide_path": [str(slide_dir / "a.tif")]}).to_csv(csv, index=False)
    out = tmp_path / "feats"
    source = ([f"slides={csv}"] if mode == "slides"
              else ["slide_dataset=csv", f"slide_dataset.cohort={csv}"])
    assert run("extract-slides", [*source, *TINY, *FAST]) == 2  # no default output folder
    assert "output_dir" in capsys.readouterr().err
    assert run("extract-slides", [*source, f"output_dir={out}", *TINY, *FAST]) == 0
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["a.tif"]  # no slide_id: file name
    assert np.load(out / "a.tif" / "features.npy").shape[1] == 3 + 32


def test_both_csv_modes_name_folders_by_slide_id(slide_dir, tmp_path):
    csv = tmp_path / "cohort.csv"
    pd.DataFrame({"slide_id": ["s-A", "s-B"],
                  "slide_path": [str(slide_dir / "a.tif"), str(slide_dir / "c.tif")],
                  "label": ["x", "y"]}).to_csv(csv, index=False)
    outs = {}
    for mode, source in (("slides", [f"slides={csv}"]),
                         ("slide_dataset", ["slide_dataset=csv", f"slide_dataset.cohort={csv}"])):
        outs[mode] = tmp_path / mode
        assert run("extract-slides", [*source, f"output_dir={outs[mode]}", *TINY, *FAST]) == 0
        assert sorted(p.name for p in outs[mode].iterdir() if p.is_dir()) == ["s-A", "s-B"]
    for sid in ("s-A", "s-B"):  # same slides, same features, whichever mode
        np.testing.assert_array_equal(np.load(outs["slides"] / sid / "features.npy"),
                                      np.load(outs["slide_dataset"] / sid / "features.npy"))
    # and the cohort reader finds them by slide_id
    from rl_benchmarks.datasets.slides_classification.csv_cohort import load_csv_cohort

    frame = load_csv_cohort(csv, features_root_dir=outs["slides"])
    assert [Path(p).parent.name for p in frame["features_path"]] == ["s-A", "s-B"]


def test_csv_slide_ids_must_be_folder_names_and_unique(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("slide_path,slide_id\na.tif,x:1\n")
    with pytest.raises(ValueError, match=r"c\.csv: slide id 'x:1' \(line 2\) cannot be a folder"):
        list_slides(csv)
    csv.write_text("slide_path,slide_id\na.tif,s1\nb.tif,s1\n")
    with pytest.raises(ValueError, match="slide id 's1' is used by two slides"):
        list_slides(csv)
    with pytest.raises(ValueError, match="'a.tif' is used by two slides"):
        list_slides([tmp_path / "x" / "a.tif", tmp_path / "y" / "a.tif"])
    csv.write_text("slide_path\nsub/a.tif\n")  # only slide_path: id = file name
    assert list_slides(csv) == [SlideInput(tmp_path / "sub" / "a.tif", "a.tif", None)]


def test_slides_and_slide_dataset_together_is_an_error(slide_dir, tmp_path, capsys):
    code = run("extract-slides", [f"slides={slide_dir}", "slide_dataset=tcga_coad",
                                  f"output_dir={tmp_path}", *TINY, *FAST])
    assert code == 2 and "not both" in capsys.readouterr().err


# ----------------------------------------------------------------------------- safe names


def test_safe_name():
    assert safe_name("timm:vit_tiny_patch16_224") == "timm-vit_tiny_patch16_224"
    assert safe_name("iBOTViTBasePANCAN") == "iBOTViTBasePANCAN"  # existing folders unchanged
    assert safe_name('a<b>c"d|e?f*g/h\\i') == "a-b-c-d-e-f-g-h-i"
    assert safe_name("name. ") == "name"
    for bad in ("", "..", " . "):
        with pytest.raises(ValueError, match="cannot be used as a file or folder name"):
            safe_name(bad)
