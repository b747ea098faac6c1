# quantgate's own plugin is loaded through its pytest11 entry point (`pip install -e .`).
# pytester drives the plugin tests in tests/plugin.
pytest_plugins = ["pytester"]
