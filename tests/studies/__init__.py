"""The studies of :mod:`flatlab.studies` at their tiny scale, and their committed tables."""
