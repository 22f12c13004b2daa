"""Reproducing the paper (``stingy-bench``): the paper's experiment grid as presets, their expansion into
training runs, the runner, and the report with its tables and figures. Not to be confused with the
top-level ``bench/`` folder, which measures speed (images per second), not accuracy."""
