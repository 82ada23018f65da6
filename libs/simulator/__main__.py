"""`python -m switchyard_gateway.simulator`: the same as `switchyard simulate-upstream`."""

import sys

from switchyard_gateway.simulator.cli import main

sys.exit(main())
