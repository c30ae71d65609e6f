"""The ``rlbench`` command line (the only place, with ``conf/``, where Hydra appears)."""
