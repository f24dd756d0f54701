"""Clock cycles of the engine's operations, counted in Amaranth's simulator.

One way to count, used by `hmtx sweep` (cycles per recall of each design point) and
bench/cycles.py (the cycle table of docs/hardware.md): from the start pulse to the done pulse
of the engine (:class:`hmtx.hw.engine.Engine` or the serial one). The device's CYCLES command
reports one more (frame validated -> start). Counts do not depend on the memories' contents.
"""

__all__ = ["run_engine_op", "cycles_per_recall"]

OP_CYCLE_LIMIT = 10_000_000


async def run_engine_op(ctx, engine, limit: int = OP_CYCLE_LIMIT, **operands) -> int:
    """Set ``operands`` (engine port name -> value), pulse start and return the cycles until done.

    One more tick follows done, so the engine is idle again when the next operation starts.
    """
    for name, value in operands.items():
        ctx.set(getattr(engine, name), value)
    ctx.set(engine.start, 1)
    await ctx.tick()
    ctx.set(engine.start, 0)
    cycles = 1
    while not ctx.get(engine.done):
        if cycles >= limit:
            raise RuntimeError(f"engine operation {operands} did not finish in {limit} cycles")
        await ctx.tick()
        cycles += 1
    await ctx.tick()
    return cycles


def cycles_per_recall(config, engine_kind: str = "lanes", contract: int = 1) -> int:
    """Engine cycles of one RECALL over a full cache (n = N slots) at ``config``, for the engine
    HmtxTop builds with ``engine=engine_kind`` and ``contract``."""
    from amaranth.sim import Simulator

    from hmtx.hw.engine import Op
    from hmtx.hw.top import engine_class

    engine = engine_class(engine_kind)(config, contract=contract)
    got = []

    async def tb(ctx):
        got.append(await run_engine_op(ctx, engine, op=Op.RECALL, n_keys=config.n_slots))

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got[0]
