"""Drive HmtxTop in the Amaranth simulator: send raw wire bytes, collect response frames, and
compare each with hmtx.model.golden_device.GoldenDevice fed the same bytes."""

from amaranth.sim import Simulator

from hmtx.hw.top import HmtxTop
from hmtx.model import protocol as P
from hmtx.model.golden_device import GoldenDevice

__all__ = ["run_against_golden"]


def run_against_golden(config, steps, r, gap=0.2, stall=0.2, compare_cycles=False, engine="lanes", contract=1):
    """``steps``: (label, raw wire bytes). Every response must equal the golden's byte for byte,
    except CYCLES payloads (implementation-defined counts), whose status/opcode/length are checked.
    ``engine``: HmtxTop's datapath ("lanes" or "serial"), ``contract`` its arithmetic (the golden
    device models that engine's gateware: its protocol version). Returns [(label, golden
    response bytes, rtl response bytes)]."""
    dut = HmtxTop(config, engine=engine, contract=contract)
    gold = GoldenDevice(config, engine, contract)
    results = []

    async def tb(ctx):
        got = bytearray()

        async def tick():
            # the responses are drained (with random stalls) while the command is sent, too: a
            # step of several frames gets its first answers while its later bytes go in
            ready = r.random() >= stall
            ctx.set(dut.rsp.ready, ready)
            _, _, cmd_ready, valid, data = await ctx.tick().sample(dut.cmd.ready, dut.rsp.valid, dut.rsp.payload)
            if valid and ready:
                got.append(data)
            return cmd_ready

        for label, raw in steps:
            want = gold.feed(raw)
            n_frames = want.count(bytes([P.END]))
            got.clear()
            cycles = 0
            for b in raw:
                while r.random() < gap:
                    await tick()
                ctx.set(dut.cmd.valid, 1)
                ctx.set(dut.cmd.payload, b)
                while not await tick():
                    cycles += 1
                    assert cycles < 100000, f"{label}: the command is not taken (got {bytes(got).hex()})"
                ctx.set(dut.cmd.valid, 0)
            cycles = 0
            while got.count(bytes([P.END])) < n_frames:
                await tick()
                cycles += 1
                assert cycles < 100000, f"{label}: no response (got {bytes(got).hex()})"
            ctx.set(dut.rsp.ready, 0)
            # nothing more may follow: the device answers each frame exactly once
            for _ in range(4):
                await ctx.tick()
                assert not ctx.get(dut.rsp.valid), f"{label}: extra response bytes"
            results.append((label, want, bytes(got)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    for label, want, got in results:
        fw, fg = P.FrameDecoder().feed(want), P.FrameDecoder().feed(got)
        if (not compare_cycles and len(fw) == 1 and len(fw[0].body) >= 2
                and fw[0].body[1] == P.Op.CYCLES and fw[0].body[0] == 0):
            assert len(fg) == 1 and fg[0].body[:2] == fw[0].body[:2] and len(fg[0].body) == len(fw[0].body), label
            assert P.crc8(fg[0].body) == 0, label
            continue
        assert got == want, f"{label}:\n golden {want.hex()}\n rtl    {got.hex()}"
    return results
