"""Reporting: metrics as pure functions, summaries across runs, plots."""
