"""`python -m sockrace`."""

import sys

from sockrace.cli import main

sys.exit(main())
