"""Validation schemes: nested cross-validation and its fold utilities."""

from rl_benchmarks.val_schemes.nested_cross_validation import NestedCrossValidation
from rl_benchmarks.val_schemes.utils import generate_permutations, split_cv, update_trainer_cfg

__all__ = ["NestedCrossValidation", "generate_permutations", "split_cv", "update_trainer_cfg"]
