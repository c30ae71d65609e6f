"""One home per concept: the ImageNet normalisation constants live in ``constants.py`` and
the DeepZoom geometry in ``slides/geometry.py``; every other module imports them (read from
the source with ``ast``, so a new copy anywhere in the package fails here)."""

from __future__ import annotations

import ast
from pathlib import Path

import rl_benchmarks

PACKAGE_ROOT = Path(rl_benchmarks.__file__).resolve().parent
NORM_VALUES = {0.485, 0.456, 0.406, 0.229, 0.224, 0.225}
GEOMETRY_FUNCS = {"deepzoom_dimensions", "deepzoom_level_count", "choose_level",
                  "tile_boxes_level0", "grid_coords", "tile_grid", "level_downsample"}


def _trees() -> dict[str, ast.AST]:
    return {str(p.relative_to(PACKAGE_ROOT)): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _norm_triples(tree: ast.AST) -> list[int]:
    """Lines of tuple/list literals made of three ImageNet mean/std values."""
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == 3
        and all(isinstance(e, ast.Constant) and e.value in NORM_VALUES for e in node.elts)
    ]


def test_imagenet_mean_std_are_written_once():
    found = {name: lines for name, tree in _trees().items() if (lines := _norm_triples(tree))}
    assert list(found) == ["constants.py"] and len(found["constants.py"]) == 2, found


def test_reexported_constants_are_the_same_objects():
    from rl_benchmarks import constants
    from rl_benchmarks.models.feature_extractors import core
    from rl_benchmarks.pretraining import augment

    assert constants.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert constants.IMAGENET_STD == (0.229, 0.224, 0.225)
    for module in (core, augment):
        assert module.IMAGENET_MEAN is constants.IMAGENET_MEAN
        assert module.IMAGENET_STD is constants.IMAGENET_STD


def test_deepzoom_geometry_is_defined_once():
    defined = {
        (name, node.name)
        for name, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name in GEOMETRY_FUNCS
    }
    assert {name for name, _ in defined} == {"slides/geometry.py"}, sorted(defined)
    assert {func for _, func in defined} == GEOMETRY_FUNCS
