"""``python -m depositwatch``."""

from depositwatch.cli import main

raise SystemExit(main())
