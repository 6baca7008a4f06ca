"""Command-line tools apart from stage code: params check, stage deps, pareto, params table."""
