"""``python -m v2sync`` runs the same CLI as the ``v2sync`` console script."""
import sys

from v2sync.cli import main

sys.exit(main())
