# Stage: latents (filled in by its issue).
