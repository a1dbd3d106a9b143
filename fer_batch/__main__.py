import sys

from fer_batch.cli import main

sys.exit(main())
