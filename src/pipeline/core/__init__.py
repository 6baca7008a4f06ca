"""Shared plumbing every stage uses: typed params, the catalog of choices, errors, atomic
io, paths, records, the stage runner, versions and file-header readers."""
