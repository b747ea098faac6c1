"""The vLLM server under test: its process (local, container or attached), GPU leases, and what runs inside it."""
