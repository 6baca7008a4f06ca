"""Data sources and the prepare recipe: code that only the prepare stage runs."""
