import sys

from aioidentd.cli import main

sys.exit(main())
