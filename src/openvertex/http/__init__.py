"""The HTTP edge: the only package that knows about the web framework."""
