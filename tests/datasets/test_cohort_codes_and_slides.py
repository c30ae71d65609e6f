"""CANCER_SUBTYPE codes of single cohorts equal the union's; ``load_slide=True`` keeps slides
that have a slide file but neither coords nor features."""

from __future__ import annotations

import pytest

from rl_benchmarks import constants
from rl_benchmarks.datasets import load_dataset

COHORT_PATIENTS = {
    "TCGA_KIRC": ["TCGA-A3-3306", "TCGA-A3-3307"],
    "TCGA_KIRP": ["TCGA-2K-A9WE"],
    "TCGA_KICH": ["TCGA-KL-8323", "TCGA-KL-8324"],
    "TCGA_LUAD": ["TCGA-05-4244"],
    "TCGA_LUSC": ["TCGA-18-3406", "TCGA-18-3407"],
}
EXPECTED_CODE = {"TCGA_KIRC": 0, "TCGA_KIRP": 1, "TCGA_KICH": 2, "TCGA_LUAD": 0, "TCGA_LUSC": 1}
UNION = {"TCGA_KIRC": "TCGA_RCC", "TCGA_KIRP": "TCGA_RCC", "TCGA_KICH": "TCGA_RCC",
         "TCGA_LUAD": "TCGA_NSCLC", "TCGA_LUSC": "TCGA_NSCLC"}


def test_cancer_subtype_code_constants():
    assert {c: constants.cancer_subtype_code(c) for c in EXPECTED_CODE} == EXPECTED_CODE
    assert constants.cancer_subtype_code("TCGA_READ") == 1
    assert constants.tcga_union_of("TCGA_KICH") == "TCGA_RCC"
    assert constants.tcga_union_of("TCGA_RCC") == "TCGA_RCC"
    with pytest.raises(ValueError, match="TCGA_OV is in none of the TCGA unions"):
        constants.tcga_union_of("TCGA_OV")


@pytest.mark.parametrize("cohort", sorted(EXPECTED_CODE))
def test_single_cohort_cancer_subtype_equals_the_union(ref, cohort):
    for sub, patients in COHORT_PATIENTS.items():
        ref.tcga_slides(sub, {p: 1 for p in patients})
    union = load_dataset(UNION[cohort], ref.features, label="CANCER_SUBTYPE", load_slide=False)
    single = load_dataset(cohort, ref.features, label="CANCER_SUBTYPE", load_slide=False)
    assert len(single) == len(COHORT_PATIENTS[cohort])
    assert set(single["label"]) == {float(EXPECTED_CODE[cohort])}
    from_union = union.set_index("slide_id").loc[single["slide_id"], "label"]
    assert single["label"].tolist() == from_union.tolist()
    # the same class names and task as the union (not a one-class list)
    assert single.attrs["classes"] == union.attrs["classes"]
    assert single.attrs["task"] == union.attrs["task"]
    assert single.attrs["classes"][EXPECTED_CODE[cohort]] == cohort.replace("TCGA_", "")


def test_load_slide_keeps_slides_without_coords_or_features(ref):
    """Unlike the reference (which drops rows without coords), a slide file alone is enough
    with load_slide=True: extraction computes the tiles itself."""
    bare, full = "TCGA-BR-4187", "TCGA-BR-4188"
    ref.tcga_slides("TCGA_STAD", {bare: 1, full: 1}, no_features=(bare,), with_coords=(full,),
                    with_slide_file=True)
    df = load_dataset("TCGA_STAD", ref.features, load_slide=True).set_index("patient_id")
    assert sorted(df.index) == [bare, full]
    assert df.loc[bare, "slide_path"].endswith(".svs")
    assert df[["coords_path", "features_path"]].loc[bare].isna().all()
    assert df[["coords_path", "features_path"]].loc[full].notna().all()
    # without slides, the bare slide has nothing to offer and is dropped
    assert load_dataset("TCGA_STAD", ref.features, load_slide=False)["patient_id"].tolist() == [full]
    # the same for Camelyon16
    ref.camelyon16({"Normal_001": "Normal", "Tumor_001": "Tumor"}, {}, no_features=("Tumor_001",),
                   with_slides=True)
    c16 = load_dataset("CAMELYON16_TRAIN", ref.features, load_slide=True).set_index("slide_id")
    assert sorted(c16.index) == ["Normal_001", "Tumor_001"]
    assert c16.loc["Tumor_001", ["coords_path", "features_path"]].isna().all()
