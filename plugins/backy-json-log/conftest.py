"""Lets pytest import this plugin's package from the source tree, from here or from the
repository's root (pytest puts this directory on sys.path for its conftest)."""
