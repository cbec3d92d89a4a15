"""Input/output shared by the data and evaluation rooms."""
