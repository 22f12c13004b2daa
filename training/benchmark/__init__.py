"""The paper's benchmark: presets, their expansion into runs, the runner, and the report with figures."""
