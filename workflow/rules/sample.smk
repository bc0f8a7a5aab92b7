# Stage: sample (filled in by its issue).
