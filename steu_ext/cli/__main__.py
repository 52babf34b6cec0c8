"""``python -m steu_ext.cli`` (as ``torchrun -m steu_ext.cli pmi ...`` runs it): the ``steu`` command."""
import sys

from . import main

sys.exit(main())
