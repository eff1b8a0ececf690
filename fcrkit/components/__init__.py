"""Built-in components, one module per kind or family, each a plugin registered through the public hook."""
