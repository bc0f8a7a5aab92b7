# Stage: models (filled in by its issue).
