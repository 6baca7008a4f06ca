"""pipeline-sweep: a grid of DVC experiments run as Ray tasks, results back in ``dvc exp show``.

``grid`` expands ``-S`` in DVC's own grammar, ``preflight`` refuses what would fail on the
workers, ``task`` is the Ray task (one experiment in a scratch clone), ``driver`` submits,
follows and pulls, ``report`` formats progress and the summary, ``cli`` is the command.
"""
