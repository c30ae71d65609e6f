import json
import os

import numpy as np
import pytest

from rl_benchmarks import paths
from rl_benchmarks.utils import io
from rl_benchmarks.utils.seed import derive_seed


def test_root_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLB_DATA_DIR", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data_dir is not set"):
        paths.data_dir()
    (tmp_path / "conf.yaml").write_text("data_dir: /from/yaml\nlogs_save_dir: ''\n")
    assert str(paths.data_dir()) == "/from/yaml"
    monkeypatch.setenv("RLB_DATA_DIR", "/from/env")
    assert str(paths.data_dir()) == "/from/env"
    assert str(paths.data_dir("/from/cli")) == "/from/cli"


def test_atomic_writers_leave_no_temp_on_error(tmp_path):
    target = tmp_path / "a" / "x.npy"
    io.save_npy(target, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError), io.atomic_open(tmp_path / "a" / "y.txt", "w") as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path / "a")) == ["x.npy"]
    io.write_json(tmp_path / "r.json", {"n": np.int64(3)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"n": 3}


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "slide_a") == derive_seed(0, "slide_a")
    assert derive_seed(0, "slide_a") != derive_seed(0, "slide_b")
    assert derive_seed(1, "slide_a") != derive_seed(0, "slide_a")


def test_save_npy_never_writes_a_pickle(tmp_path):
    ids = np.array(["a", "bb", "ccc"], dtype=object)
    io.save_npy(tmp_path / "ids.npy", ids)
    back = np.load(tmp_path / "ids.npy", allow_pickle=False)  # readable without pickle
    assert back.tolist() == ["a", "bb", "ccc"]
    with pytest.raises(ValueError, match=r"mixed\.npy: refusing to save an object array"):
        io.save_npy(tmp_path / "mixed.npy", np.array(["a", 1], dtype=object))
    assert not (tmp_path / "mixed.npy").exists()
    assert not hasattr(io, "save_pickle") and not hasattr(io, "load_pickle")
