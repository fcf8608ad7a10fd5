"""``python -m nfstudy``: see :mod:`nfstudy.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
