"""``python -m streamclust``: the ``streamclust`` command, for environments whose scripts folder is
not on the PATH."""

import sys

from streamclust.cli import main

sys.exit(main())
