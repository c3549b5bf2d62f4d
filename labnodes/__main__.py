import sys

from labnodes.cli import main

sys.exit(main())
