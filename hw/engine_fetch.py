"""Operand fetch of the lane engine: the block RAMs' read side and the operands of every MAC beat."""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .engine_layout import ADDR_REGS, TAG_BITS, Phase, delay, lane_group_regions
from .fanout import replicate, replicate_tree
from .mac import mac_in_layout

__all__ = ["beat_layout", "q_write_layout", "FetchControlSignature", "MCopySignature",
           "OperandFetchSignature", "OperandFetch"]


def beat_layout(layout):
    """One MAC beat as the sequencer issues it, beside the read addresses of its operands.

    ``first``/``last``/``lane_mode``/``tag`` go to the MAC (:func:`~hmtx.hw.mac.mac_in_layout`);
    ``phase`` picks the lanes' operands, ``lim`` the lanes that take part (the rest multiply
    0: a partial last block), ``qaddr`` the word of ``qbuf``, ``qhi`` the half of it that a
    recall's key word holds (:meth:`~hmtx.hw.engine_layout.EngineLayout.key_place`), ``zero``
    a weight of 0 (a single key's second beat); ``wconst`` a constant weight instead of
    ``wm``'s: 1, 2, 3 for ``fixed.CARRY_WEIGHTS`` 1, 2^8, -2^15 (ATTN_PASS's carried
    accumulator); ``copy``: the beat's ``dat`` word is also written to ``copy_addr`` (WRITE's
    copy of M_i into its slot)."""
    return data.StructLayout({
        "first": 1, "last": 1, "lane_mode": 1, "copy": 1, "zero": 1, "qhi": 1, "wconst": 2,
        "qaddr": range(max(layout.QD, 2)),
        "lim": range(layout.P + 1), "tag": TAG_BITS, "phase": Phase, "copy_addr": 24,
    })


def q_write_layout():
    """One element of q (a projection result): lane ``lane`` of ``qbuf`` word ``word``."""
    return data.StructLayout({"word": 16, "lane": 8, "y": signed(fixed.PROJ_BITS)})


class FetchControlSignature(wiring.Signature):
    """The sequencer's side of the operand fetch.

    Members
    -------
    beat : Out(stream.Signature(beat_layout(layout), always_ready=True))
        The beat whose operands are read this cycle. Valid-only: the fetch takes a beat every
        cycle (the MAC never stalls), so there is no ``ready``.
    dat_addr, w_addr, key_addr, wm_addr : Out(...)
        This cycle's read addresses (also while idle: the owner's reads of ``dat`` and ``key``).
    q_load : Out(stream.Signature(range(max(AB, 2)), always_ready=True))
        ATTENTION: read word ``payload`` of the current Q row (at ``dat_addr``) into ``qbuf``.
    q_loading : In(1)
        A Q row word is still on its way into ``qbuf``.
    attn : Out(1)
        The scores take their keys from ``dat``, not ``key``: ATTENTION's K rows, or contract 2's
        folded keys K'_i (RECALL, with S in ``qbuf``).
    q_row : Out(1)
        Contract 2 only: the score beats take an attention row (``qbuf``'s ring is AB words), not
        S (CB words).
    """

    def __init__(self, layout, w_depth):
        c = layout.config
        super().__init__({
            "beat": Out(stream.Signature(beat_layout(layout), always_ready=True)),
            "dat_addr": Out(range(layout.dat_depth)),
            "w_addr": Out(range(w_depth)),
            "key_addr": Out(range(c.n_slots * layout.KB)),
            "wm_addr": Out(range(layout.WMD)),
            "q_load": Out(stream.Signature(range(max(layout.AB, 2)), always_ready=True)),
            "q_loading": In(1),
            "attn": Out(1),
            **({"q_row": Out(1)} if layout.contract == 2 else {}),
        })


class MCopySignature(wiring.Signature):
    """WRITE's copy of M_i into its slot of ``dat``, as the fetch reads it (the write-back's
    input).

    Members
    -------
    s1 : Out(1)
        A word to copy is being read (stage 1: the write-back copies the data select to its lane
        groups now).
    s2 : Out(1)
        ``data`` holds the word to copy (stage 2), to be written at ``addr``.
    addr : Out(24)
    data : Out(data.ArrayLayout(signed(8), P))
    """

    def __init__(self, layout):
        super().__init__({
            "s1": Out(1), "s2": Out(1), "addr": Out(24),
            "data": Out(data.ArrayLayout(signed(8), layout.P)),
        })


class OperandFetchSignature(wiring.Signature):
    """Members of :class:`OperandFetch`.

    Members
    -------
    ctl : In(FetchControlSignature(layout, w_depth))
        From the sequencer.
    mac : Out(stream.Signature(mac_in_layout(P, TAG_BITS)))
        The beats into the MAC (``ready`` is not looked at: the MAC's output is always ready, so
        its input is too).
    q : In(stream.Signature(q_write_layout(), always_ready=True))
        q's elements from the write-back (RECALL's projection), into ``qbuf``.
    copy : Out(MCopySignature(layout))
        The words of M_i to copy, to the write-back.
    dat_rd, key_rd, wm_rd, w<r>_rd : In(memory.ReadPort.Signature(...))
        The read ports of ``dat``, ``key``, ``wm`` and of each row memory of ``w`` (contract 2
        has no ``key`` ring: ``key_rd`` None).
    w<r>_wr : In(memory.WritePort.Signature(...))
        The write ports of the rows of ``w``.
    wr_w_addr, wr_w_data, wr_w_en : In(...)
        The owner's writes of ``w`` (:class:`~hmtx.hw.engine.EngineSignature`).
    wr_dat_addr, wr_dat_data, wr_dat_en : In(...)
        Contract 2 only: the owner's writes of ``dat``, whose vector words (0..CB-1: RECALL's S)
        are copied into ``qbuf`` as they are written.
    """

    def __init__(self, layout, *, dat_rd, key_rd, wm_rd, w_rd, w_wr, w_depth):
        members = {
            "ctl": In(FetchControlSignature(layout, w_depth)),
            "mac": Out(stream.Signature(mac_in_layout(layout.P, TAG_BITS))),
            "q": In(stream.Signature(q_write_layout(), always_ready=True)),
            "copy": Out(MCopySignature(layout)),
            "dat_rd": In(dat_rd), "wm_rd": In(wm_rd),
            **({"key_rd": In(key_rd)} if key_rd is not None else {}),
            "wr_w_addr": In(range(w_depth)),
            "wr_w_data": In(data.ArrayLayout(signed(8), layout.P)),
            "wr_w_en": In(layout.P),
        }
        if layout.contract == 2:
            members.update({"wr_dat_addr": In(range(layout.dat_depth)),
                            "wr_dat_data": In(data.ArrayLayout(signed(8), layout.P)),
                            "wr_dat_en": In(layout.P)})
        for r, (rd, wr) in enumerate(zip(w_rd, w_wr)):
            members[f"w{r}_rd"], members[f"w{r}_wr"] = In(rd), In(wr)
        super().__init__(members)


class OperandFetch(wiring.Component):
    """The read side of the engine's memories and the operands of each MAC beat.

    A beat's control follows its memory reads: ``ADDR_REGS`` registers while the read addresses
    travel to the block RAMs (the sequencer computes next cycle's addresses), stage 1 while the
    block RAMs read, stage 2 at their output registers (a DP16KD's clock-to-output is 5.8 ns in
    nextpnr's model, so nothing looks at a block RAM's output before a register), stages 3 and 4
    on the way to the MAC lanes in the DSP columns: the first can sit at its block RAM, the next
    where the placer likes; ``w``'s row select sits between them. The beat goes into the MAC
    ``ADDR_REGS + 4`` cycles after the sequencer issued it. The stage registers carry no reset
    (a reset would fan out to all of them); only their valid bits do, so a reset mid-operation
    issues no stray MAC beats.

    Per lane group (:attr:`~hmtx.hw.engine_layout.EngineLayout.LG` lanes) every select into the
    lanes has its own register copy, in two levels (a copy per region of the die, then per group:
    :func:`~hmtx.hw.fanout.replicate_tree`): the operand muxes' phase and lane limit, ``w``'s row
    select, ``qbuf``'s word address and the weighted sum's weight.

    Owns ``qbuf`` (q, or the current attention query row: a few words of P int16 lanes, so
    flip-flops rather than a memory), written from the write-back's projection results and from
    ``dat`` (a Q row); under contract 2 also from the owner's writes of the input vector, so that
    a RECALL finds S there and goes straight to its scores (S and the folded keys are both in
    ``dat``, whose one read port would otherwise spend CB cycles on S first). The memories it reads are reached through their ports in the signature:
    ``dat``, ``key`` and the rows of ``w`` are the engine's (the floorplan finds them by their
    names under the engine; ``dat`` and ``key`` are shared with the write-back and the owner),
    ``wm`` is the softmax's. The owner's writes of ``w`` go through here too (registered like the
    read addresses), as the fetch is the only reader of ``w``.

    Members: :class:`OperandFetchSignature`.
    """

    def __init__(self, layout, *, dat_rd, key_rd, wm_rd, w_rd, w_wr, w_row_depth):
        self.layout, self.w_row_depth = layout, w_row_depth
        self.w_depth = 2 * layout.config.d_h * layout.CB
        super().__init__(OperandFetchSignature(layout, dat_rd=dat_rd, key_rd=key_rd, wm_rd=wm_rd,
                                               w_rd=w_rd, w_wr=w_wr, w_depth=self.w_depth))
        self.w_rd = [getattr(self, f"w{r}_rd") for r in range(len(w_rd))]
        self.w_wr = [getattr(self, f"w{r}_wr") for r in range(len(w_wr))]

    def elaborate(self, platform):
        m = Module()
        ctl, L = self.ctl, self.layout
        regions = lane_group_regions(L.G)
        s_taps = delay(m, ctl.beat.payload, ADDR_REGS + 4, "s")
        s1, s2, s3, s4 = s_taps[ADDR_REGS:]
        sv = delay(m, ctl.beat.valid, ADDR_REGS + 4, "s_valid", reset_less=False)
        s1_valid, s2_valid, s4_valid = sv[ADDR_REGS], sv[ADDR_REGS + 1], sv[ADDR_REGS + 3]
        rd = self._read(m, s1)
        m.d.comb += [self.copy.s1.eq(s1_valid & s1.copy), self.copy.s2.eq(s2_valid & s2.copy),
                     self.copy.addr.eq(s2.copy_addr), self.copy.data.eq(rd.dat_q)]
        # stages 3 and 4
        # (the operand muxes' selects, one register per lane group: the same values as s4's)
        opsel = Signal(data.StructLayout({"phase": Phase, "lim": range(L.P + 1), "qhi": 1, "zero": 1,
                                          "attn": 1}))
        m.d.comb += [opsel.phase.eq(s2.phase), opsel.lim.eq(s2.lim), opsel.qhi.eq(s2.qhi),
                     opsel.zero.eq(s2.zero), opsel.attn.eq(ctl.attn)]
        sel = [data.View(opsel.shape(), v) for v in replicate_tree(m, opsel, regions, "opsel")]
        dat_q3 = delay(m, rd.dat_q, 2, "dat_q")[-1]
        key_q3 = delay(m, rd.key_q, 2, "key_q")[-1] if L.contract == 1 else None
        # the weighted sum's weight goes to every lane: one copy per lane group
        wm_q3 = replicate_tree(m, rd.wm_q, regions, "wm_q3")
        w_q3 = self._w_select(m, rd, regions)
        q_op = self._qbuf(m, rd.dat_q, s1, s1_valid, regions)
        mi = self.mac.payload
        m.d.comb += [self.mac.valid.eq(s4_valid), mi.first.eq(s4.first), mi.last.eq(s4.last),
                     mi.lane_mode.eq(s4.lane_mode), mi.tag.eq(s4.tag)]
        for l in range(L.P):
            g = sel[l // L.LG]
            on = l < g.lim
            with m.Switch(g.phase):
                with m.Case(Phase.PROJ):
                    m.d.comb += [mi.a[l].eq(Mux(on, dat_q3[l], 0)), mi.b[l].eq(w_q3[l])]
                with m.Case(Phase.SCORE):
                    if L.contract == 1:
                        # recall: lane l takes part in the beats of its half (qhi), with its key lane
                        half, k = L.key_place(l)
                        in_beat = g.attn | (g.qhi if half else ~g.qhi) if L.KP != L.P else 1
                        m.d.comb += [mi.a[l].eq(Mux(on & in_beat, q_op[l], 0)),
                                     mi.b[l].eq(Mux(g.attn, dat_q3[l], key_q3[k]))]
                    else:   # (every key is in ``dat``: K rows, or the folded keys K'_i)
                        m.d.comb += [mi.a[l].eq(Mux(on, q_op[l], 0)), mi.b[l].eq(dat_q3[l])]
                with m.Case(Phase.WSUM):
                    m.d.comb += [mi.a[l].eq(Mux(g.zero, 0, wm_q3[l // L.LG].as_signed())),
                                 mi.b[l].eq(dat_q3[l])]
                if L.contract == 2:
                    with m.Case(Phase.FOLD):
                        # K_i[j] from ``wm`` (written there by the K projection) times W_q word
                        # j*CB + cb, whose lane l is W_q[cb*P + l, j]: lane l accumulates K'_i[cb*P + l]
                        m.d.comb += [mi.a[l].eq(wm_q3[l // L.LG].as_signed()), mi.b[l].eq(Mux(on, w_q3[l], 0))]
        self._w_writes(m)
        return m

    def _read(self, m, s1):
        """The read addresses through ``ADDR_REGS`` registers to the block RAMs, and their
        outputs registered (stage 2). Returns the stage-2 registers (``dat_q``, ``key_q``,
        ``wm_q``, ``w_row_q``) and the taps of the row select of ``w`` (``w_row_sel``)."""
        ctl = self.ctl
        # ``wm`` (one block RAM) is read a cycle earlier than the rest, through one register
        # fewer, so that its output has a register of its own before the carry-constant
        # multiplexer into ``wm_q``: that register has one load and sits at the block RAM (the
        # route from its 5.8 ns clock-to-output to ``wm_q``, whose loads are the lane regions'
        # copies, was 4.5 ns). Every write of ``wm`` lands cycles before a beat that reads it
        # is issued (the sequencer waits for the probability pass's / the K projection's results).
        addr_r = [delay(m, a, n, name)[-1] for a, n, name in
                  ((ctl.dat_addr, ADDR_REGS, "dat_addr"), (ctl.w_addr, ADDR_REGS, "w_addr"),
                   (ctl.key_addr, ADDR_REGS, "key_addr"), (ctl.wm_addr, ADDR_REGS - 1, "wm_addr"))]
        m.d.comb += [self.dat_rd.addr.eq(addr_r[0]), self.wm_rd.addr.eq(addr_r[3])]
        m.d.comb += [port.addr.eq(addr_r[1] % self.w_row_depth) for port in self.w_rd]
        rd = SimpleNamespace()
        rd.dat_q = Signal.like(self.dat_rd.data, reset_less=True, name="dat_q")
        rd.key_q = None
        rd.wm_q = Signal.like(self.wm_rd.data, reset_less=True, name="wm_q")
        rd.w_row_q = [Signal.like(port.data, reset_less=True, name=f"w_row{r}_q")
                      for r, port in enumerate(self.w_rd)]
        # (a carry beat's constant weight replaces wm's word here, before it is copied per group)
        wconst = Array(Const(w & 0xFFFF, 16) for w in (0, *fixed.CARRY_WEIGHTS[:3]))
        wm_raw = Signal.like(self.wm_rd.data, reset_less=True, name="wm_raw")
        m.d.sync += [rd.dat_q.eq(self.dat_rd.data), wm_raw.eq(self.wm_rd.data),
                     rd.wm_q.eq(Mux(s1.wconst == 0, wm_raw, wconst[s1.wconst]))]
        if self.layout.contract == 1:
            rd.key_q = Signal.like(self.key_rd.data, reset_less=True, name="key_q")
            m.d.comb += self.key_rd.addr.eq(addr_r[2])
            m.d.sync += rd.key_q.eq(self.key_rd.data)
        m.d.sync += [q.eq(port.data) for q, port in zip(rd.w_row_q, self.w_rd)]
        # which row of ``w`` the word at stage 3 came from (the address's high bits, three cycles on)
        w_row_now = Signal(range(max(2, len(self.w_rd))))
        m.d.comb += w_row_now.eq(addr_r[1] // self.w_row_depth)
        rd.w_row_sel = delay(m, w_row_now, 2, "w_row_sel")
        return rd

    def _w_select(self, m, rd, regions):
        """``w``'s row select between stages 3 and 4 (nine rows at smollm, nine places on the
        die): the select drives 512 nine-way multiplexers, one per bit, so one copy per lane group."""
        L = self.layout
        w_row_q2 = [delay(m, q, 1, f"w_row{r}_q")[-1] for r, q in enumerate(rd.w_row_q)]
        w_q3 = Signal.like(rd.w_row_q[0], reset_less=True, name="w_q3")
        w_rsel = replicate_tree(m, rd.w_row_sel[-2], regions, "w_rsel")
        for g in range(L.G):
            with m.Switch(w_rsel[g]):
                for r, q in enumerate(w_row_q2):
                    with m.Case(r):
                        m.d.sync += [w_q3[l].eq(q[l]) for l in range(g * L.LG, min(L.P, (g + 1) * L.LG))]
        return w_q3

    def _qbuf(self, m, dat_q, s1, s1_valid, regions):
        """``qbuf``: its writes and its read into the score beats' operand registers (registered
        at stage 4 like the block-RAM operands). Returns the operand registers.

        Contract 1: QD words of int16 (q's elements from the write-back, a Q row's words from
        ``dat``), read through a QD-way multiplexer per lane, each lane group with its own copy
        of the word address. Contract 2 (:meth:`_qring`): a ring of int8 words with no read
        multiplexer."""
        L = self.layout
        if L.contract == 2:
            return self._qring(m, dat_q, s1, s1_valid, regions)
        P, LG = L.P, L.LG
        QD = L.QD
        qbuf = [[Signal(signed(16), name=f"qbuf{w}_{l}", reset_less=True) for l in range(P)]
                for w in range(QD)]
        q_op = [Signal(signed(16), name=f"q_op{l}", reset_less=True) for l in range(P)]
        q_rd = replicate_tree(m, s1.qaddr, regions, "q_rd")
        for l in range(P):
            with m.Switch(q_rd[l // LG]):
                for w in range(QD):
                    with m.Case(w):
                        m.d.sync += q_op[l].eq(qbuf[w][l])
        qa_bits = max(1, (QD - 1).bit_length())
        q_wr = self._q_writes(m, qa_bits)
        ql_wr = self._q_loads(m)
        for l in range(P):
            qw, lw = q_wr[l // LG], ql_wr[l // LG]
            for w in range(QD):
                with m.If(lw.valid & (lw.idx == w)):
                    m.d.sync += qbuf[w][l].eq(dat_q[l])
                with m.Elif(qw.valid & (qw.word == w) & (qw.lane == l)):
                    m.d.sync += qbuf[w][l].eq(qw.y)
        return q_op

    def _q_loads(self, m):
        """ATTENTION: the Q row's words (addresses registered, read, registered -- as the MAC
        beats), from dat_q, at ql2. Returns the copies per lane group of ql1's (valid, idx)."""
        L = self.layout
        ql_issue = Signal(data.StructLayout({"valid": 1, "idx": range(max(L.AB, 2))}))
        m.d.comb += [ql_issue.valid.eq(self.ctl.q_load.valid), ql_issue.idx.eq(self.ctl.q_load.payload)]
        ql_taps = delay(m, ql_issue, ADDR_REGS + 2, "ql", reset_less=False)
        ql1 = ql_taps[ADDR_REGS]
        m.d.comb += self.ctl.q_loading.eq(Cat(*(t.valid for t in ql_taps)).any())
        return [data.View(ql1.shape(), v) for v in replicate(m, ql1, L.G, "ql_wr", reset=True)]

    def _qring(self, m, dat_q, s1, s1_valid, regions):
        """Contract 2's ``qbuf``: int8 words (S, or a Q row; nothing projects q under contract 2)
        that turn as a ring under the score beats, so that a beat always takes word 0.

        The score beats of a RECALL read words 0, 1, .., CB-1 once per key, those of an attention
        row words 0 .. AB-1 once per key, in order and without gaps: each beat takes word 0 and
        turns the ring by one (word w takes word w+1; the last word of the ring, CB-1 or AB-1,
        takes word 0), so after every key the words are back in place. A flip-flop then takes
        either its loaded byte or its neighbour's, in the same lane: no QD-way multiplexer and
        no wires across lanes (at smollm, 9 words; at P = 16, 36, whose read multiplexer was the
        routed build's critical path). Loads happen only before a phase of score beats: the
        owner's writes of S (0..CB-1, snooped, while the engine is idle) and a Q row's words
        (which land before the first score beat takes word 0, hw/engine_sequencer.py)."""
        L = self.layout
        P, LG, QD, AB = L.P, L.LG, L.QD, L.AB
        qbuf = [[Signal(signed(8), name=f"qbuf{w}_{l}", reset_less=True) for l in range(P)]
                for w in range(QD)]
        q_op = [Signal(signed(8), name=f"q_op{l}", reset_less=True) for l in range(P)]
        # a score beat at stage 3 (the copies are two cycles behind s1), and the ring's length
        turn_in = Signal(data.StructLayout({"turn": 1, "attn": 1}))
        m.d.comb += [turn_in.turn.eq(s1_valid & (s1.phase == Phase.SCORE)), turn_in.attn.eq(self.ctl.q_row)]
        turns = [data.View(turn_in.shape(), v)
                 for v in replicate_tree(m, turn_in, regions, "q_turn", reset=True)]
        qa_bits = max(1, (QD - 1).bit_length())
        ql_wr = self._q_loads(m)
        sn = self._snoop(m, qa_bits)
        for l in range(P):
            g = l // LG
            sw, lw, t = sn.wr[g], ql_wr[g], turns[g]
            m.d.sync += q_op[l].eq(qbuf[0][l])
            for w in range(QD):
                # (the owner writes only while the engine is idle: never beside a Q row load)
                load = (lw.valid & (lw.idx == w)) | (sw.valid & (sw.word == w) & sn.en[l])
                # the next word in a RECALL's ring (CB words) and in an attention row's (AB)
                nr, na = (w + 1) % L.CB if w < L.CB else (w + 1) % QD, (w + 1) % AB if w < AB else (w + 1) % QD
                nxt = qbuf[nr][l] if nr == na else Mux(t.attn, qbuf[na][l], qbuf[nr][l])
                with m.If(load):
                    m.d.sync += qbuf[w][l].eq(sn.lane_data[l])
                with m.Elif(t.turn):
                    m.d.sync += qbuf[w][l].eq(nxt)
            # per lane, once: the snooped byte while a copy is valid, else the Q row's
            m.d.comb += sn.lane_data[l].eq(Mux(sw.valid, sn.data[l], dat_q[l]))
        return q_op

    def _q_writes(self, m, qa_bits):
        """Contract 1: q's elements from the write-back. Each lands in ``qbuf`` a cycle later,
        from a copy per lane group of (write, word, lane, value): the value would otherwise go
        to every one of the P x QD registers. Returns the copies."""
        L = self.layout
        lane_bits = max(1, (L.P - 1).bit_length())
        q, q_in = self.q, Signal(data.StructLayout({"valid": 1, "word": qa_bits, "lane": lane_bits,
                                                    "y": signed(fixed.PROJ_BITS)}))
        m.d.comb += [q_in.valid.eq(q.valid), q_in.word.eq(q.payload.word), q_in.lane.eq(q.payload.lane),
                     q_in.y.eq(q.payload.y)]
        return [data.View(q_in.shape(), v) for v in replicate(m, q_in, L.G, "q_wr", reset=True)]

    def _snoop(self, m, qa_bits):
        """Contract 2: the owner's writes of the input vector's words (0..CB-1), registered once,
        with a copy of (valid, word) per lane group, for ``qbuf``. Returns them."""
        L = self.layout
        P = L.P
        sn_in = Signal(data.StructLayout({"valid": 1, "word": qa_bits}))
        m.d.comb += [sn_in.valid.eq((self.wr_dat_en != 0) & (self.wr_dat_addr < L.CB)),
                     sn_in.word.eq(self.wr_dat_addr[:qa_bits])]
        sn = SimpleNamespace()
        sn.wr = [data.View(sn_in.shape(), v) for v in replicate(m, sn_in, L.G, "sn_wr", reset=True)]
        sn.en = Signal(P, name="sn_en", reset_less=True)
        m.d.sync += sn.en.eq(self.wr_dat_en)
        # the data a register per lane group (fanout.replicate: kept apart): the owner writes one
        # byte into every lane, and as plain registers Yosys merged the P copies into one byte
        # driving all 64 lanes' ring words across the die
        LG = L.LG
        sn.data = []
        for g in range(L.G):
            lanes = range(g * LG, min(P, (g + 1) * LG))
            (cp,) = replicate(m, Cat(*(self.wr_dat_data[l] for l in lanes)), 1, f"sn_data{g}")
            sn.data += [cp[k * 8:(k + 1) * 8].as_signed() for k in range(len(lanes))]
        sn.lane_data = [Signal(signed(8), name=f"sn_ld{l}") for l in range(P)]
        return sn

    def _w_writes(self, m):
        """The owner's writes of ``w`` (weights, while the engine is idle): registered like the
        read addresses, then into their row."""
        w_wr_in = Signal(data.StructLayout({"addr": len(self.wr_w_addr), "data": self.wr_w_data.shape()}))
        m.d.comb += [w_wr_in.addr.eq(self.wr_w_addr), w_wr_in.data.eq(self.wr_w_data)]
        w_wr = delay(m, w_wr_in, ADDR_REGS, "w_wr")[-1]
        # (each row's byte enables are decoded before their registers, so that no logic sits
        # between the last register and the block RAMs of a row)
        # The first register of each row's enables is an explicit flip-flop (fanout.replicate):
        # as a plain register Yosys folds "row != r" into its synchronous reset, and that reset
        # LUT then drives 64 flip-flops across the row. No reset: the owner's request register
        # (hw/top.py) resets, and the chain flushes while reset is held.
        for r, port in enumerate(self.w_wr):
            en_d1 = replicate(m, Mux(self.wr_w_addr // self.w_row_depth == r, self.wr_w_en, 0), 1,
                              f"w{r}_wr_en_d1")[0]
            en_r = delay(m, en_d1, ADDR_REGS - 1, f"w{r}_wr_en_d")[-1]
            m.d.comb += [port.addr.eq(w_wr.addr % self.w_row_depth), port.data.eq(w_wr.data),
                         port.en.eq(en_r)]
