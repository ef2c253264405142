"""``python -m dpokit.bench``: the step benchmark without the CLI entry point (also runs its workers)."""

import sys

from . import main

sys.exit(main())
