import sys

from docclassify.audit.cli import main

sys.exit(main())
