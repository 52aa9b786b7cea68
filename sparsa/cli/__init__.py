"""The ``sparsa`` command line. Each command parses flags and calls one public library function."""
