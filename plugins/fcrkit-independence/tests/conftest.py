# fcrkit's test fixtures for plugin authors: a registry of the built-ins only (fcrkit_registry), and
# fcrkit_plugin(obj) to register a plugin object for one test
from fcrkit.testing.pytest_plugin import fcrkit_plugin, fcrkit_registry  # noqa: F401
