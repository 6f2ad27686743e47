"""Regenerate (or with --check, compare) man/gemma.1 and completions/*; see tools/docgen."""

import sys

from docgen import main

if __name__ == "__main__":
    sys.exit(main())
