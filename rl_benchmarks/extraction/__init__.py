"""Feature-extraction pipelines: slides -> ``features.npy``, tile datasets -> ``tile_features.npy``.

Resumable (finished slides are skipped), crash-safe (atomic writes) and distributed
(``torchrun``: slides are sharded across ranks, balanced by tile count).
"""
