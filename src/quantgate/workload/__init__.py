"""What is sent to an engine and what comes back as figures: the request grid, llama-benchy pp/tg, the
concurrency sweep, math accuracy, and the time budget they run under."""
