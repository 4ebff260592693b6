"""`python -m viewer --help`: explore a learned world with keyboard and mouse (see viewer.app)."""

import sys

from viewer.app import main

sys.exit(main())
