import sys

from mobileclip_repro.cli import main

sys.exit(main())
