"""Amaranth-simulator helpers for the hw tests: stream sources and sinks with random valid gaps
and random backpressure, and a seeded RNG (fixed default seed, ``HMTX_SEED`` overrides)."""

import os
import random

from amaranth.sim import Simulator

__all__ = ["seed", "rng", "stream_put", "stream_get", "run_stream"]


def seed(default=1):
    return int(os.environ.get("HMTX_SEED", default))


def rng(default=1):
    s = seed(default)
    print(f"HMTX_SEED={s}")
    return random.Random(s)


async def stream_put(ctx, port, payload, r=None, gap=0.0):
    while r is not None and r.random() < gap:
        await ctx.tick()
    ctx.set(port.valid, 1)
    ctx.set(port.payload, payload)
    await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def stream_get(ctx, port, r=None, stall=0.0, timeout=20000):
    while r is not None and r.random() < stall:
        ctx.set(port.ready, 0)
        await ctx.tick()
    ctx.set(port.ready, 1)
    for _ in range(timeout):
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if valid:
            ctx.set(port.ready, 0)
            return payload
    raise TimeoutError(f"no output within {timeout} cycles")


def run_stream(dut, i_port, o_port, items, n_out, r, gap=0.3, stall=0.3, convert=lambda p: p):
    """Push ``items`` into ``i_port`` and collect ``n_out`` outputs (``convert``-ed in the sink)."""
    out = []

    async def source(ctx):
        for item in items:
            await stream_put(ctx, i_port, item, r, gap)

    async def sink(ctx):
        for _ in range(n_out):
            out.append(convert(await stream_get(ctx, o_port, r, stall)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    assert len(out) == n_out, f"got {len(out)} of {n_out} outputs"
    return out
