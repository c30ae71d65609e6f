"""The toy-cohort helpers of tests/val_schemes/cv_testlib.py become importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "val_schemes"))
