import sys

from fergate.cli import main

sys.exit(main())
