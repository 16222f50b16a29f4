"""The studies of flatlab.studies end to end at their tiny scale, and their committed tables."""
