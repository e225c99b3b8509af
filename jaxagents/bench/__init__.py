"""Benchmarks (run them on an accelerator; they print tables with ratios to an anchor from the same run)."""
