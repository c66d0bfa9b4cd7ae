"""`python -m tastemaker` is the `tastemaker` command."""

import sys

from tastemaker.cli import main

sys.exit(main())
