import sys

from rl_benchmarks.cli.main import main

sys.exit(main())
