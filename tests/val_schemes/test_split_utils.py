"""split_cv, generate_permutations and update_trainer_cfg."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch.utils.data import Subset

from rl_benchmarks.val_schemes import generate_permutations, split_cv, update_trainer_cfg
from rl_benchmarks.val_schemes.utils import root_dataset


class Table:
    """Any object with the three attributes and a length is a valid dataset."""

    def __init__(self, n=1000, n_patients=300, n_centers=10, seed=0):
        rng = np.random.default_rng(seed)
        self.patient_id = rng.integers(0, n_patients, size=n)
        self.center_id = self.patient_id % n_centers
        # a patient-level binary label with ~30 % positives
        pos = rng.random(n_patients) < 0.3
        self.stratified = pos[self.patient_id].astype(int)

    def __len__(self):
        return len(self.patient_id)

    def __getitem__(self, i):
        return i


def test_random_split_sizes_and_stratification():
    data = Table()
    folds = split_cv(data, n_splits=5, split_mode="random_split", random_state=0)
    assert len(folds) == 5
    seen = []
    for train, test in folds:
        # the reference's return type: numpy index arrays, positions in the dataset
        assert isinstance(train, np.ndarray) and isinstance(test, np.ndarray)
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert (len(train), len(test)) == (800, 200)
        assert not set(train) & set(test)
        assert abs(data.stratified[test].mean() - data.stratified.mean()) < 0.05
        seen += test.tolist()
    assert sorted(seen) == list(range(1000))


@pytest.mark.parametrize("mode,key", [("patient_split", "patient_id"), ("center_split", "center_id")])
def test_group_splits_keep_groups_disjoint(mode, key):
    data = Table()
    groups = getattr(data, key)
    for train, test in split_cv(data, n_splits=5, split_mode=mode, random_state=3):
        assert not set(groups[train]) & set(groups[test])
        assert abs(data.stratified[test].mean() - data.stratified.mean()) < 0.10


def test_inner_split_of_a_subset_gives_positions_in_the_subset():
    data = Table()
    train, _ = split_cv(data, n_splits=5, random_state=0)[0]
    sub = Subset(data, train.tolist())
    inner = split_cv(sub, n_splits=4, random_state=1)
    for tr, va in inner:
        # positions in the subset (0..len(sub)-1), partitioning it
        assert tr.max() < len(sub) and va.max() < len(sub)
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(sub)))
        # mapped back through the subset: inside the outer train part, patients disjoint
        tr_abs, va_abs = train[tr], train[va]
        assert set(tr_abs) | set(va_abs) <= set(train)
        assert not set(data.patient_id[tr_abs]) & set(data.patient_id[va_abs])
        assert [sub[i] for i in tr] == tr_abs.tolist()  # Table items are their index
    # the attributes of a subset are read through its indices: splitting the subset equals
    # splitting a copy of the dataset restricted to it
    copy = Table()
    copy.patient_id, copy.center_id = data.patient_id[train], data.center_id[train]
    copy.stratified = data.stratified[train]
    for (a, b), (c, d) in zip(inner, split_cv(copy, n_splits=4, random_state=1)):
        assert a.tolist() == c.tolist() and b.tolist() == d.tolist()
    # nested subsets map back with root_dataset
    root, base = root_dataset(Subset(sub, list(range(10))))
    assert root is data and base.tolist() == train[:10].tolist()


def test_split_is_deterministic_and_depends_on_random_state():
    data = Table()
    a = [f[1].tolist() for f in split_cv(data, random_state=1)]
    b = [f[1].tolist() for f in split_cv(data, random_state=1)]
    c = [f[1].tolist() for f in split_cv(data, random_state=2)]
    assert a == b and a != c


def test_unstratified_and_no_label():
    data = Table()
    data.stratified = None
    folds = split_cv(data, n_splits=5, stratified=True)
    assert sum(len(t) for _, t in folds) == 1000


def test_too_few_patients_is_a_clear_error():
    table = Table(n=5)
    table.patient_id = np.array([0, 0, 1, 1, 2])
    table.stratified = np.array([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="only 3 distinct patients for n_splits=5"):
        split_cv(table, n_splits=5)


def test_rare_class_is_a_clear_error():
    table = Table(n=60, n_patients=60)
    table.patient_id = np.arange(60)
    table.stratified = np.zeros(60, int)
    table.stratified[:3] = 1  # 3 positive patients, 5 folds
    with pytest.raises(ValueError, match="class 1 .* only 3 patients, fewer than n_splits=5"):
        split_cv(table, n_splits=5)


def test_unknown_split_mode():
    with pytest.raises(ValueError, match="split_mode='slide_split' is unknown"):
        split_cv(Table(), split_mode="slide_split")


def test_generate_permutations_expected_list():
    params = {
        "learning_rate": [1.0e-3, 1.0e-4],
        "batch_size": 16,
        "model": {"n_top": [5, 10], "bias": True},
    }
    got = generate_permutations(params)
    assert got == [
        {"learning_rate": 1.0e-3, "batch_size": 16, "model": {"n_top": 5, "bias": True}},
        {"learning_rate": 1.0e-3, "batch_size": 16, "model": {"n_top": 10, "bias": True}},
        {"learning_rate": 1.0e-4, "batch_size": 16, "model": {"n_top": 5, "bias": True}},
        {"learning_rate": 1.0e-4, "batch_size": 16, "model": {"n_top": 10, "bias": True}},
    ]
    # the reference grid, lr-major order, also from an OmegaConf node
    grid = OmegaConf.create({"learning_rate": [1e-3, 1e-4], "weight_decay": [0.0, 1e-4]})
    assert [tuple(d.values()) for d in generate_permutations(grid)] == [
        (1e-3, 0.0), (1e-3, 1e-4), (1e-4, 0.0), (1e-4, 1e-4)
    ]
    assert generate_permutations(None) == [{}]


def test_generate_permutations_takes_the_reference_keyword():
    grid = {"learning_rate": [1e-3, 1e-4], "weight_decay": [0.0, 1e-4]}
    expected = [
        {"learning_rate": 1e-3, "weight_decay": 0.0},
        {"learning_rate": 1e-3, "weight_decay": 1e-4},
        {"learning_rate": 1e-4, "weight_decay": 0.0},
        {"learning_rate": 1e-4, "weight_decay": 1e-4},
    ]
    assert generate_permutations(grid_search_params=grid) == expected
    assert generate_permutations(grid) == expected  # positional use still works
    assert generate_permutations(grid_search_params=None) == [{}]


def test_update_trainer_cfg_merges_nested_and_copies():
    cfg = OmegaConf.create({"learning_rate": 2e-4, "model": {"_target_": "x", "n_top": 10}})
    new = update_trainer_cfg(cfg, {"learning_rate": 1e-3, "model": {"n_top": 5}})
    assert new.learning_rate == 1e-3 and new.model.n_top == 5 and new.model._target_ == "x"
    assert cfg.learning_rate == 2e-4 and cfg.model.n_top == 10


def test_nested_cv_plan_maps_inner_positions_back_to_the_root():
    """split_cv gives positions; the nested-CV plan turns them into Subsets of the root with
    absolute indices (what the trainers and the fast path index)."""
    from rl_benchmarks.val_schemes import NestedCrossValidation

    data = Table(n=300, n_patients=120)
    given = Subset(data, list(range(20, 280)))  # the plan also works on a subset
    ncv = NestedCrossValidation({"model": {}}, n_splits_outer=4, n_splits_inner=3,
                                n_repeats_inner=2)
    plan = ncv._plan(given)
    outer = split_cv(given, 4, random_state=0)
    assert len(plan) == 4
    for fold, (tv_pos, te_pos) in zip(plan, outer):
        tv, te = fold["train_val"], fold["test"]
        assert tv.dataset is data and te.dataset is data
        assert tv.indices == (np.asarray(given.indices)[tv_pos]).tolist()
        assert te.indices == (np.asarray(given.indices)[te_pos]).tolist()
        assert len(fold["inner"]) == 2 * 3
        for ri in range(2):
            runs = [(tr, va) for r, _, tr, va in fold["inner"] if r == ri]
            pos = split_cv(tv, 3, random_state=ri)
            covered = []
            for (tr, va), (tr_pos, va_pos) in zip(runs, pos):
                assert tr.dataset is data and va.dataset is data
                assert tr.indices == np.asarray(tv.indices)[tr_pos].tolist()
                assert va.indices == np.asarray(tv.indices)[va_pos].tolist()
                assert set(tr.indices) | set(va.indices) == set(tv.indices)
                assert not set(data.patient_id[tr.indices]) & set(data.patient_id[va.indices])
                covered += va.indices
            assert sorted(covered) == sorted(tv.indices)
