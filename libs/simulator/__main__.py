"""`python -m libs.simulator`: the same as `switchyard simulate-upstream`."""

import sys

from libs.simulator.cli import main

sys.exit(main())
