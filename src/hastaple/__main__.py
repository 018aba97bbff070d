"""Allow ``python -m hastaple``."""

from hastaple.app.cli import main

main()
