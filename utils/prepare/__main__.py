"""``python -m utils.prepare``: see utils.prepare.cli."""
import sys

from utils.prepare.cli import main

sys.exit(main())
