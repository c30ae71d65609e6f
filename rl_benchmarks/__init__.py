"""rl-benchmarks: computational pathology around Phikon (iBOT ViT-B, TCGA pan-cancer).

Slides to tissue tiles, tile feature extraction, MIL slide models in nested
cross-validation, tile-level linear probing and iBOT pre-training.
"""

__version__ = "0.2.0"
