"""`python -m kubespeed_cli`: the `kubespeed` command with this Python (an unactivated venv works)."""

import sys

from kubespeed_cli.main import main

sys.exit(main())
