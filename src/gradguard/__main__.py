"""`python -m gradguard` runs the command line."""

from .cli import main

main()
