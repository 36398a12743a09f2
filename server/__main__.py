import sys

from fedproto.server.cli import main

sys.exit(main())
