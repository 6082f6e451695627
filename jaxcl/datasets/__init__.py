"""Data sets shipped inside the package (package data), so that studies run offline."""
