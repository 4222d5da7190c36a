import sys

from sqrl.cli import main

sys.exit(main())
