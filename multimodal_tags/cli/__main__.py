"""`python -m multimodal_tags.cli ...` (how `accelerate launch -m` runs the command line)."""
import sys

from . import main

sys.exit(main())
