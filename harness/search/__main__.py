"""python -m harness.search (harness/search/cli.py)."""

import sys

from harness.search.cli import main

sys.exit(main())
