"""``python -m nfstudy.train``: see :mod:`nfstudy.train.cli`."""

from .cli import main

raise SystemExit(main())
