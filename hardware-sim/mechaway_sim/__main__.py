import sys

from mechaway_sim.cli import main

sys.exit(main())
