"""`python -m switchyard_gateway.cli`: the same as `switchyard`."""

import sys

from switchyard_gateway.cli import main

sys.exit(main())
