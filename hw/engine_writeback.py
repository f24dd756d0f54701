"""Write-back of the lane engine: the MAC's projection and weighted-sum results into their
memories, and the write ports of ``dat`` and ``key``."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .arith import ShiftRoundSat
from .engine_fetch import MCopySignature, q_write_layout
from .engine_fold import FoldWriteSignature
from .engine_layout import ADDR_REGS, MASK_W, PROJ_TAG, SHIFT_W, TAG_BITS, delay
from .fanout import replicate
from .mac import mac_out_layout

__all__ = ["WriteBackControlSignature", "WriteBackSignature", "WriteBack"]


class WriteBackControlSignature(wiring.Signature):
    """The sequencer's side of the write-back.

    Members
    -------
    write : Out(1)
        The operation is WRITE: projection results are K_i's, into ``key`` (else q's, into the
        fetch's ``qbuf``).
    kslot_base : Out(range(n_slots * KB + 1))
        WRITE: the slot's first word in ``key``.
    carry : Out(1)
        ATTN_PASS pass 3 but the last: a weighted-sum word is the carried accumulator, three
        int8 words (``fixed.carry_digits``) at ``part_base + 3w``, not an output word.
    writing : In(1)
        A write of the engine's will still be on its way to ``dat`` or ``key`` next cycle (an
        operation is done once they land).
    retire : In(1)
        A projection result, or a weighted-sum word, is written (the sequencer's count of
        results in flight).
    """

    def __init__(self, layout):
        super().__init__({
            "write": Out(1), "kslot_base": Out(range(layout.config.n_slots * layout.KB + 1)), "carry": Out(1),
            "writing": In(1), "retire": In(1),
        })


class WriteBackSignature(wiring.Signature):
    """Members of :class:`WriteBack`.

    Members
    -------
    ctl : In(WriteBackControlSignature(layout))
    proj, wsum : In(stream.Signature(mac_out_layout(P, TAG_BITS), always_ready=True))
        The MAC's results of the projection and of the weighted sum (valid-only: results are
        taken as they come).
    q : Out(stream.Signature(q_write_layout(), always_ready=True))
        q's elements (RECALL's projection), to the fetch's ``qbuf``.
    copy : In(MCopySignature(layout))
        WRITE's words of M_i, from the fetch, to copy into their slot.
    dat_wr, key_wr : In(memory.WritePort.Signature(...))
        The write ports of ``dat`` and ``key`` (contract 2 has no ``key`` ring: ``key_wr`` None).
    wr_dat_addr, wr_dat_data, wr_dat_en, wq_shift, wk_shift : In(...)
        The owner's (:class:`~hmtx.hw.engine.EngineSignature`): writes of ``dat`` while the
        engine is idle; the projections' shifts.
    k : Out(stream.Signature(q_write_layout(), always_ready=True))
        Contract 2 only: WRITE's K_i elements (as q's), to the softmax's ``wm``, where the fold
        beats read them as their scalar.
    fold : In(FoldWriteSignature(layout))
        Contract 2 only: the fold unit's K' mantissas, a lane group at a time, into ``dat``.
    """

    def __init__(self, layout, *, dat_wr, key_wr):
        out = stream.Signature(mac_out_layout(layout.P, TAG_BITS), always_ready=True)
        super().__init__({
            "ctl": In(WriteBackControlSignature(layout)),
            "proj": In(out), "wsum": In(out),
            "q": Out(stream.Signature(q_write_layout(), always_ready=True)),
            "copy": In(MCopySignature(layout)),
            "dat_wr": In(dat_wr), **({"key_wr": In(key_wr)} if key_wr is not None else {}),
            "wr_dat_addr": In(range(layout.dat_depth)),
            "wr_dat_data": In(data.ArrayLayout(signed(8), layout.P)),
            "wr_dat_en": In(layout.P),
            "wq_shift": In(SHIFT_W), "wk_shift": In(SHIFT_W),
            **({"k": Out(stream.Signature(q_write_layout(), always_ready=True)),
                "fold": In(FoldWriteSignature(layout))} if layout.contract == 2 else {}),
        })


class WriteBack(wiring.Component):
    """Where results land, and the one way into ``dat`` and ``key``.

    * Projection results: ``y = sat16(round_shift(acc, shift))`` (a :class:`~hmtx.hw.arith.ShiftRoundSat`,
      4 cycles), K_i's into lane ``key_place(j % P)`` of key word ``key_word(j // P, j % P)`` of
      the slot (WRITE), q's to the fetch's ``qbuf`` (RECALL).
    * Weighted-sum results: ``out = sat16(round_shift(acc, OUT_SHIFT))`` per lane, a whole word
      at once, registered (``res``), its low bytes written at the word the result's tag names
      (``out_base + 2w``) the cycle after and its high bytes at the next word the cycle after that. Results come two or more
      cycles apart (the sequencer gives a single key a second beat for this), so ``res`` holds
      still for both writes and loads every cycle (no enable fans out to its P x 16 registers).
      ATTN_PASS's carried accumulators (``ctl.carry``) go the same way as three words from
      ``part_base + 3w``: ``res`` holds their digits (``fixed.carry_digits``), results come
      three or more cycles apart.
    * WRITE's copy of M_i into its slot, from the fetch's stage-2 register of ``dat``.
    * The owner's writes of ``dat`` while the engine is idle (the engine's own take precedence).

    The data multiplexer of ``dat``'s write port selects per lane group, from copies of the
    write's kind (M copy, result low bytes, result high bytes). The writes of ``dat`` and
    ``key`` then go through ``ADDR_REGS`` registers, as many as the read addresses (a write lands
    that many cycles later; nothing reads an address in the cycles after writing it: phases
    drain first), addresses and data without reset, the lane enables with it on their first
    register. ``ctl.writing`` follows those registers.

    The memories are the engine's (shared with the fetch and the owner), reached through their
    write ports in the signature.

    Members: :class:`WriteBackSignature`.
    """

    def __init__(self, layout, *, dat_wr, key_wr):
        self.layout = layout
        super().__init__(WriteBackSignature(layout, dat_wr=dat_wr, key_wr=key_wr))

    def elaborate(self, platform):
        m = Module()
        L, ctl = self.layout, self.ctl
        P, KP = L.P, L.KP
        # (``any``: the engine writes, whatever its lanes: ``writing`` follows that one bit through
        # the write registers, not an OR of every lane's enables over all of them)
        dat_w = Signal(data.StructLayout({"addr": len(self.dat_wr.addr), "data": self.dat_wr.data.shape(),
                                          "en": P, "any": 1}))
        # (contract 2 keeps no key ring: K_i goes only to ``wm``, for the fold)
        key_w = (Signal(data.StructLayout({"addr": len(self.key_wr.addr), "data": self.key_wr.data.shape(),
                                           "en": KP, "any": 1})) if L.contract == 1 else None)
        # while idle the owner writes ``dat`` (the engine's own writes below take precedence; the
        # owner's are not ``any``: ``writing`` is only read while an operation finishes)
        m.d.comb += [dat_w.addr.eq(self.wr_dat_addr), dat_w.data.eq(self.wr_dat_data),
                     dat_w.en.eq(self.wr_dat_en)]
        proj_done = self._projection(m, key_w)
        wsum_done = self._weighted_sum(m, dat_w)
        m.d.comb += ctl.retire.eq(proj_done | wsum_done)
        # (as many registers as the read addresses; addresses and data without reset, the lane
        # enables with it)
        coming = self._write_ports(m, dat_w, self.dat_wr, "dat_w")
        if key_w is not None:
            coming += self._write_ports(m, key_w, self.key_wr, "key_w")
        m.d.comb += ctl.writing.eq(Cat(*coming).any())
        return m

    def _write_ports(self, m, w, port, name):
        """``w`` (addr, data, en, any) into ``port`` through ``ADDR_REGS`` registers, as many as
        the read addresses: addresses and data without reset, the lane enables with it. Returns
        the ``any`` bits of the writes that will still be on their way next cycle (the taps shift,
        so this cycle's and every in-flight tap but the last)."""
        w_r = delay(m, w, ADDR_REGS, name)[-1]
        en_taps = delay(m, w.en, ADDR_REGS, f"{name}_en", reset_first=True)
        any_taps = delay(m, w.any, ADDR_REGS, f"{name}_any", reset_first=True)
        m.d.comb += [port.addr.eq(w_r.addr), port.data.eq(w_r.data), port.en.eq(en_taps[-1])]
        return ([w.any] if ADDR_REGS > 1 else []) + any_taps[:-2]

    def _projection(self, m, key_w):
        """y = sat16(round_shift(acc, shift)) into lane j%P of word j//P: K_i's into ``key``
        (WRITE), q's to the fetch. Returns the result's valid (a result retired)."""
        L, ctl = self.layout, self.ctl
        proj_rq = ShiftRoundSat(fixed.ACC_BITS, fixed.PROJ_BITS, MASK_W, tag_bits=TAG_BITS)
        m.submodules.proj_rq = proj_rq
        m.d.comb += [proj_rq.o.ready.eq(1),
                     proj_rq.i.valid.eq(self.proj.valid),
                     proj_rq.i.payload.x.eq(self.proj.payload.dot),
                     proj_rq.i.payload.s.eq(Mux(ctl.write, self.wk_shift, self.wq_shift)),
                     proj_rq.i.payload.tag.eq(self.proj.payload.tag)]
        tag = data.View(PROJ_TAG, proj_rq.o.payload.tag)
        pw, plane = tag.word, tag.lane
        if key_w is not None:
            m.d.comb += [key_w.data[l].eq(proj_rq.o.payload.y) for l in range(L.KP)]
            k_lane = L.key_place(plane[:max(1, (L.P - 1).bit_length())])[1]
            with m.If(proj_rq.o.valid & ctl.write):
                m.d.comb += [key_w.addr.eq(ctl.kslot_base + L.key_word(pw, plane)),
                             key_w.en.eq(Const(1, L.KP) << k_lane), key_w.any.eq(1)]
        m.d.comb += [self.q.valid.eq(proj_rq.o.valid & ~ctl.write), self.q.payload.word.eq(pw),
                     self.q.payload.lane.eq(plane), self.q.payload.y.eq(proj_rq.o.payload.y)]
        if L.contract == 2:
            m.d.comb += [self.k.valid.eq(proj_rq.o.valid & ctl.write), self.k.payload.eq(self.q.payload)]
        return proj_rq.o.valid

    def _weighted_sum(self, m, dat_w):
        """The weighted sum's words into ``dat`` as low then high bytes (or, carried, three
        digit words), and WRITE's M copy. Returns the last word's write (a result retired)."""
        L, carry = self.layout, self.ctl.carry
        P = L.P
        hi, lo = (1 << (fixed.OUT_BITS - 1)) - 1, -(1 << (fixed.OUT_BITS - 1))
        res = Signal(data.ArrayLayout(24, P), reset_less=True)
        res_addr = Signal(range(L.dat_depth), reset_less=True)
        res_lo, res_hi, res_3 = Signal(), Signal(), Signal()
        res_now = self.wsum.valid
        mo = self.wsum.payload
        m.d.sync += [res_lo.eq(res_now), res_hi.eq(res_lo), res_3.eq(res_hi & carry)]
        # the tag is the result's first word (the sequencer's); the address steps by one a write
        with m.If(res_now):
            m.d.sync += res_addr.eq(mo.tag[:16])
        with m.Elif(res_lo | res_hi):
            m.d.sync += res_addr.eq(res_addr + 1)
        for l in range(P):
            x = mo.lanes[l]
            r = (x + (1 << (fixed.OUT_SHIFT - 1))) >> fixed.OUT_SHIFT
            out = Mux(r > hi, hi, Mux(r < lo, lo, r))[:16]
            # fixed.carry_digits: d0 = x's low byte, signed; y1 = (x - d0) / 2^8; d1 = y1's low
            # byte; e2 = -(y1 - d1) / 2^8's low byte
            y1 = Signal(signed(25), name=f"carry_y1_{l}")
            y2 = Signal(signed(17), name=f"carry_y2_{l}")
            m.d.comb += [y1.eq((x >> 8) + x[7]), y2.eq((y1 >> 8) + y1[7])]
            digits = Cat(x[:8], y1[:8], (-y2)[:8])
            m.d.sync += res[l].eq(Mux(carry, digits, out) if L.attn_pass else out)
        # WRITE: M_i is copied into its slot while the first column of K_i is projected
        with m.If(self.copy.s2):
            m.d.comb += [dat_w.addr.eq(self.copy.addr), dat_w.en.eq((1 << P) - 1), dat_w.any.eq(1)]
        with m.If(res_lo):
            m.d.comb += [dat_w.addr.eq(res_addr), dat_w.en.eq((1 << P) - 1), dat_w.any.eq(1)]
        with m.If(res_hi | res_3):
            m.d.comb += [dat_w.addr.eq(res_addr), dat_w.en.eq((1 << P) - 1), dat_w.any.eq(1)]
        fold = L.contract == 2
        if fold:
            # contract 2's WRITE: one lane group of K' (its lanes' enables only)
            with m.If(self.fold.valid):
                m.d.comb += [dat_w.addr.eq(self.fold.addr),
                             dat_w.en.eq(Const((1 << L.LG) - 1, P) << (self.fold.group * L.LG)),
                             dat_w.any.eq(1)]
        # what the write of the next cycle is, per lane group
        wsel_in = Signal(data.StructLayout({"lo": 1, "hi": 1, "w3": 1, "copy": 1, **({"fold": 1} if fold else {})}))
        m.d.comb += [wsel_in.lo.eq(res_now), wsel_in.hi.eq(res_lo), wsel_in.w3.eq(res_hi & carry),
                     wsel_in.copy.eq(self.copy.s1)]
        if fold:
            m.d.comb += wsel_in.fold.eq(self.fold.pre)
        wsel = [data.View(wsel_in.shape(), v) for v in replicate(m, wsel_in, L.G, "dat_wsel")]
        for l in range(P):
            g = wsel[l // L.LG]
            with m.If(g.lo):
                m.d.comb += dat_w.data[l].eq(res[l][:8])
            with m.Elif(g.hi):
                m.d.comb += dat_w.data[l].eq(res[l][8:16])
            with m.Elif(g.w3):
                m.d.comb += dat_w.data[l].eq(res[l][16:24])
            with m.Elif(g.copy):
                m.d.comb += dat_w.data[l].eq(self.copy.data[l])
            if fold:
                with m.Elif(g.fold):
                    m.d.comb += dat_w.data[l].eq(self.fold.data[l])
        return (res_hi & ~carry) | res_3
