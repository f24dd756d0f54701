"""Benchmarks of hmtx (``hmtx bench``): each module measures one thing and can run alone with
``python -m bench.<module>`` from the repository root. Results land in docs/results/."""
