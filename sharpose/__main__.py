"""`python -m sharpose`: the `sharpose` command."""
from sharpose.cli import main

raise SystemExit(main())
