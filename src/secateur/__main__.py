import sys

from secateur.app.cli import main

sys.exit(main())
