"""Local test grid of the alien.py project (see grid.py)."""
