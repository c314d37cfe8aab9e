import sys

from inferplan.cli import main

sys.exit(main())
