# Stage: train (filled in by its issue).
