"""Data for the built-in case studies (the speech corpus of the WaveNet study)."""
