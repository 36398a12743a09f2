import sys

from fedproto.client.cli import main

sys.exit(main())
