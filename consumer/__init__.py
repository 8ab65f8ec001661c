"""The consumer: watches an export directory and takes over each new version."""
