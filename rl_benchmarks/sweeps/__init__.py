"""Sweeps: many experiments from one command (Hydra multirun, ``rlbench benchmark``).

:mod:`~rl_benchmarks.sweeps.progress` keeps a sweep's progress (which jobs are done,
running, failed or skipped, with an ETA) in an append-only event file that every job,
whatever process or machine it runs in, writes to; :mod:`~rl_benchmarks.sweeps.suite`
reads benchmark suites (tasks × models) and expands them into experiments. The Hydra glue
(launching, per-job validation) is the command layer's: ``rl_benchmarks.cli.multirun``.
"""
