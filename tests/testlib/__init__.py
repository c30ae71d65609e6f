"""Helpers shared by the tests (toy cohorts, tiny checkpoints, tiny pre-training configs).

``tests/`` is on ``sys.path`` because ``tests/conftest.py`` sits in a folder without an
``__init__.py`` (pytest's default import mode), so tests import them as
``from testlib.cv import ToyCohort``.
"""
