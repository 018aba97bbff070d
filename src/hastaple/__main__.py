"""Allow ``python -m hastaple``."""

from hastaple.cli import main

main()
