"""The pytest layer over quantgate.session."""
