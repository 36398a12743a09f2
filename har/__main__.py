import sys

from fedproto.har.cli import main

sys.exit(main())
