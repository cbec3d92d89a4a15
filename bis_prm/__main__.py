import sys

from bis_prm.cli import main

sys.exit(main())
