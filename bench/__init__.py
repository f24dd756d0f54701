"""Benchmarks of hmtx (``hmtx bench``, :mod:`hmtx.bench.cmd_bench`): each module measures one
thing and can run alone with ``python -m hmtx.bench.<module>``. Results land in docs/results/.
The top layer: it may import host/ and everything below it; nothing imports it but the
command line, which names ``hmtx.bench.cmd_bench`` among its subcommands."""
