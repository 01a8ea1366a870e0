import sys

from gateway.replay.server import main

sys.exit(main())
