"""``python -m mechaway``."""

import sys

from mechaway.cli import main

sys.exit(main())
