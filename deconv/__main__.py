"""`python -m deconv`: the command line (see deconv/cli.py)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

from deconv.cli import main  # noqa: E402

sys.exit(main())
