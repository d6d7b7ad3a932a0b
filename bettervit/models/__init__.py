"""Importing this package registers every model family."""
