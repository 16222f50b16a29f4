"""The studies of flatlab.studies, each end to end at its tiny scale, and the shared pipeline."""
