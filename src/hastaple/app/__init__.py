"""What a person runs: the command line, its output, verify, demo and doctor."""
