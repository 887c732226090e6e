"""Models for the built-in case studies; each is one readable file."""
