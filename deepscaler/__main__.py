"""``python -m deepscaler`` is the ``deepscaler`` command."""

import sys

from deepscaler.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
