"""Command line (placeholder until the pipeline lands)."""


def main() -> None:
    """Entry point."""
