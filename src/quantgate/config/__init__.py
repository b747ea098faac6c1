"""What a run is asked to do: the config matrix (TOML), the workload settings, and their checks."""
