"""Tests of the studies of flatlab.studies, each at its tiny scale."""
