"""`python -m tunelab.cli ...`: the same as the `tunelab` command (what distributed launchers run)."""

import sys

from tunelab.cli.main import main

sys.exit(main())
