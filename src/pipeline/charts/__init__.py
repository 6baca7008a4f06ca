"""Charts a person can open anywhere, offline: static images rendered by vl-convert (no browser,
no network), and the self-contained HTML page `dvc plots show` fills in."""
