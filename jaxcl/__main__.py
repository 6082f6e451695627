"""``python -m jaxcl``: the command line (:mod:`jaxcl.cli`)."""

from .cli import main

raise SystemExit(main())
