"""What a run leaves behind: the markdown report, plots, the roofline, pytest-benchmark JSON, the run history."""
