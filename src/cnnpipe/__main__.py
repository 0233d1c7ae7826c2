"""python -m cnnpipe"""

import sys

from cnnpipe.cli import main

sys.exit(main())
