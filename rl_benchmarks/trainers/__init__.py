"""Trainers: the reference's ``TorchTrainer`` and a fast ensemble trainer that runs the
same protocol for many (fold, hyper-parameter) members at once."""

from rl_benchmarks.trainers.base_trainer import BaseTrainer
from rl_benchmarks.trainers.torch_trainer import TorchTrainer
from rl_benchmarks.trainers.utils import slide_level_train_step, slide_level_val_step

__all__ = ["BaseTrainer", "TorchTrainer", "slide_level_train_step", "slide_level_val_step"]
