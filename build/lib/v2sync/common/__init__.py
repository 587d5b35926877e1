"""Shared building blocks: the exception tree, registries, addresses, task helpers.

Nothing here opens a socket; ``transport/internet`` is the only package that does.
"""
