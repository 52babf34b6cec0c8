"""``python -m steu_ext.cli`` (as ``torchrun -m steu_ext.cli pmi ...`` runs it): the ``steu`` command."""
import sys

from . import main

if __name__ == "__main__":   # not when merely imported (e.g. by pkgutil.walk_packages)
    sys.exit(main())
