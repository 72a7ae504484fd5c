"""python -m portablenn.cli: the command line, as python -m portablenn."""
import sys

from . import main

sys.exit(main())
