# Stage: evaluate (filled in by its issue).
