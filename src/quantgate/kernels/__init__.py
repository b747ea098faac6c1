"""Which kernels the engine chose, read from its log as a normalized record."""
