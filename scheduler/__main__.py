"""`python -m scheduler ...` runs the `smsledger` command (for environments without the script)."""

from scheduler.cli import main

raise SystemExit(main())
