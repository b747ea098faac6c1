"""The checkpoints a config serves: recipes quantgate builds and caches, and full-size shape models."""
