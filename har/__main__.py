import sys

from har.cli import main

sys.exit(main())
