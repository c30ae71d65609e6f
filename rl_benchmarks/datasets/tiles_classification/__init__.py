"""Tile datasets: NCT-CRC, Camelyon17-WILDS and any ImageFolder tree."""

from rl_benchmarks.datasets.tiles_classification.camelyon17_wilds import load_camelyon17_wilds
from rl_benchmarks.datasets.tiles_classification.image_folder import load_image_folder
from rl_benchmarks.datasets.tiles_classification.nct_crc import load_nct_crc

__all__ = ["load_camelyon17_wilds", "load_image_folder", "load_nct_crc"]
