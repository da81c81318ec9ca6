"""Command-line entry points: bqq-export, bqq-build, bqq-validate."""
