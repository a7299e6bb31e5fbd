"""Personalisation: user profiles from interactions and a per-user ranking of tags."""
