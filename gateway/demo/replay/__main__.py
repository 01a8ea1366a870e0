import sys

from gateway.demo.replay.server import main

sys.exit(main())
