"""A faithful in-process fake of the Strand platform, for tests and the demo."""
