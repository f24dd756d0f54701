"""The dot-product stages of the sequential engine (:class:`~hmtx.hw.serial_engine.SerialEngine`),
each a component the sequencer starts and that signals done: the projection, the query row, the
scores and the weighted sums. Each issues its beats and requantizations to the shared multiplier
(:class:`~hmtx.hw.serial_mac.SerialMac`) and addresses the memories it reads and writes through
ports in its signature."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hmtx.model import fixed

from .engine import EXP_W
from .serial_signatures import (Control, MacPort, OperandA, OperandB, beat, element, is_element, job_layout,
                                lane_bits, read_port, requantize, step_lane, write_port)

__all__ = ["Projection", "QueryRow", "Scores", "WeightedSum"]


class Projection(wiring.Component):
    """Projects the vector in ``vin`` (``dat`` words ``0..CB-1``) through ``W_k`` (WRITE, the
    second half of ``w``) or ``W_q`` (RECALL, the first half) one output element ``j`` at a time:
    a dot product of column ``j`` (``CB`` ``w`` words from ``j * CB``, past ``W_q`` for ``W_k``)
    with the vector, ``d`` beats, then requantized by the weights' shift into ``key`` slot
    ``slot`` (WRITE, one key lane of one key word) or into the query buffer (RECALL).

    Its first cycle writes the slot's exponents (WRITE: ``mexp[slot] = vexp0``,
    ``kexp[slot] = vexp0 + wk_exp + wk_shift``) and sends q's exponent,
    ``vexp0 + wq_exp + wq_shift``, to the scores (``q_exp``). ``done`` in the cycle the last
    element is written.

    Contract 2 (only WRITE projects): K_i goes into the query buffer instead, where the fold
    (:class:`~hmtx.hw.serial_fold.Fold`) takes it, and ``kexp`` is left to the fold (K'_i's
    exponent); there is no ``key`` ring and no q, so no ``key_w``/``kexp_w``/``q_exp``.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    wq_exp, wk_exp, wq_shift, wk_shift : In
        As in :class:`~hmtx.hw.engine.EngineSignature`.
    mac : Out(MacPort)
    dat, w : In(memory.ReadPort.Signature)
        ``dat``'s and ``w``'s read ports (addresses only: the words go to the multiplier).
    key_w, qbuf_w, mexp_w, kexp_w : In(memory.WritePort.Signature)
        The results' memories.
    q_exp : Out(stream.Signature(signed(EXP_W), always_ready=True))
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        word = data.ArrayLayout(signed(8), e.P)
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            **{name: In(e.signature.members[name].shape) for name in ("wq_exp", "wk_exp", "wq_shift", "wk_shift")},
            "mac": Out(MacPort(e)),
            "dat": In(read_port(e.dat_depth, word)),
            "w": In(read_port(2 * c.d_h * e.CB, word)),
            **({"key_w": In(write_port(c.n_slots * e.KB, data.ArrayLayout(signed(16), e.KP), granularity=1))}
               if e.contract == 1 else {}),
            "qbuf_w": In(write_port(e.QD, signed(16))),
            "mexp_w": In(write_port(c.n_slots, signed(8))),
            **({"kexp_w": In(write_port(c.n_slots, signed(EXP_W))),
                "q_exp": Out(stream.Signature(signed(EXP_W), always_ready=True))} if e.contract == 1 else {}),
        })

    def elaborate(self, platform):
        m = Module()
        e, job, fetch = self._e, self.job, self.mac.fetch
        c, P, CB = e.config, e.P, e.CB
        o_word = Signal(range(e.HB + 1))        # output element j, as (word, lane)
        o_lane = Signal(lane_bits(P))
        i_word = Signal(range(CB + 1))          # beat: element of the vector, as (word, lane)
        i_lane = Signal(lane_bits(P))
        # (contract 2 projects only for a WRITE: a constant, so that the RECALL's paths go away)
        write = job.write if e.contract == 1 else Const(1)
        ptr = Mux(write, c.d_h * CB, 0) + element(P, o_word, o_lane) * CB     # column j's first w word

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.next = "START"
            with m.State("START"):
                with m.If(write):
                    m.d.comb += [self.mexp_w.addr.eq(job.slot), self.mexp_w.data.eq(job.vexp0), self.mexp_w.en.eq(1)]
                    if e.contract == 1:
                        m.d.comb += [self.kexp_w.addr.eq(job.slot), self.kexp_w.en.eq(1),
                                     self.kexp_w.data.eq(job.vexp0 + self.wk_exp + self.wk_shift)]
                if e.contract == 1:
                    m.d.comb += [self.q_exp.valid.eq(1), self.q_exp.payload.eq(job.vexp0 + self.wq_exp + self.wq_shift)]
                m.d.sync += [o_word.eq(0), o_lane.eq(0), i_word.eq(0), i_lane.eq(0)]
                m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += [self.dat.addr.eq(i_word), self.w.addr.eq(ptr + i_word),
                             *beat(fetch, OperandA.DAT, OperandB.W, i_lane, first=is_element(P, i_word, i_lane, 0),
                                   last=is_element(P, i_word, i_lane, c.d - 1))]
                m.d.sync += step_lane(P, i_word, i_lane)
                with m.If(fetch.last):
                    m.next = "ACC"
            with m.State("ACC"):
                with m.If(self.mac.acc.valid):
                    m.d.comb += requantize(self.mac.rq, Mux(write, self.wk_shift, self.wq_shift))
                    m.next = "STORE"
            with m.State("STORE"):
                y = self.mac.y.payload
                with m.If(self.mac.y.valid):
                    to_qbuf = [self.qbuf_w.addr.eq(element(P, o_word, o_lane)), self.qbuf_w.data.eq(y),
                               self.qbuf_w.en.eq(1)]
                    if e.contract == 1:
                        with m.If(job.write):
                            _, k_lane = e.key_place(o_lane)
                            m.d.comb += [self.key_w.addr.eq(job.slot * e.KB + e.key_word(o_word, o_lane)),
                                         self.key_w.en.eq(Const(1, e.KP) << k_lane)]
                            m.d.comb += [self.key_w.data[k].eq(y) for k in range(e.KP)]
                        with m.Else():
                            m.d.comb += to_qbuf
                    else:
                        # (the fold's operand: K_i, which no recall reads again)
                        m.d.comb += to_qbuf
                    m.d.sync += [i_word.eq(0), i_lane.eq(0), *step_lane(P, o_word, o_lane)]
                    with m.If(is_element(P, o_word, o_lane, c.d_h - 1)):
                        m.d.comb += self.ctl.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BEATS"
        return m


class QueryRow(wiring.Component):
    """ATTENTION: copies Q row ``a`` (``dat`` words from ``a * AB``) into the query buffer, one
    element a cycle: the multiplier's lane select picks the element out of its word
    (``mac.dat_lane``, without a beat) and it is written a cycle later. Meanwhile ``vexp[a]`` is
    read; it goes to the scores as q's exponent (``q_exp``) in the last cycle, ``done``, when
    the last element lands.

    Contract 2's RECALL loads S the same way (row 0 of ``vin``, ``d`` elements, ``vexp[0]``),
    to be scored against the folded keys.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    mac : Out(MacPort)
    dat, vexp : In(memory.ReadPort.Signature)
    qbuf_w : In(memory.WritePort.Signature)
    q_exp : Out(stream.Signature(signed(EXP_W), always_ready=True))
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            "mac": Out(MacPort(e)),
            "dat": In(read_port(e.dat_depth, data.ArrayLayout(signed(8), e.P))),
            "vexp": In(read_port(e.ROWS, signed(8))),
            "qbuf_w": In(write_port(e.QD, signed(16))),
            "q_exp": Out(stream.Signature(signed(EXP_W), always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        e, job = self._e, self.job
        c, P = e.config, e.P
        i_word = Signal(range((e.AB if e.contract == 1 else max(e.AB, e.CB)) + 1))    # element, as (word, lane)
        i_lane = Signal(lane_bits(P))
        last = is_element(P, i_word, i_lane, c.head_dim - 1)
        if e.contract == 2:     # (a RECALL: S, d elements)
            last = Mux(job.attn, last, is_element(P, i_word, i_lane, c.d - 1))
        load = Signal(data.StructLayout({"valid": 1, "idx": range(e.QD)}))
        m.d.sync += load.valid.eq(0)
        with m.If(load.valid):
            m.d.comb += [self.qbuf_w.addr.eq(load.idx), self.qbuf_w.data.eq(self.mac.dat_lane), self.qbuf_w.en.eq(1)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.d.sync += [i_word.eq(0), i_lane.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.dat.addr.eq(job.a * e.AB + i_word), self.vexp.addr.eq(job.a),
                             *beat(self.mac.fetch, OperandA.DAT, OperandB.W, i_lane, first=0, last=0, mul=0)]
                m.d.sync += [load.valid.eq(1), load.idx.eq(element(P, i_word, i_lane)), *step_lane(P, i_word, i_lane)]
                with m.If(last):
                    m.next = "EXP"
            with m.State("EXP"):
                # (vexp[a], read in LOAD; the last element lands now)
                m.d.comb += [self.q_exp.valid.eq(1), self.q_exp.payload.eq(self.vexp.data), self.ctl.done.eq(1)]
                m.next = "IDLE"
        return m


class Scores(wiring.Component):
    """One score per key ``b`` (``n_keys``): the dot product of the query buffer with ``K_b``
    (RECALL: ``key`` slot ``b``; ATTENTION: K row ``b``, ``dat`` words from ``MQ * AB``), then
    ``t_b = shift_round_sat(q . K_b * mult, shift - 8 - q_exp - k_exp_b, 32)`` with the score
    scale ``(mult, shift)`` of ``fixed.score_scale(d_k)``, sent to the softmax (``score``).

    q's exponent arrives (``q_exp``) from the projection or the query row before ``start``;
    the key's, ``kexp[b]`` (RECALL) or ``vexp[MQ + b]`` (ATTENTION), is read while the beats
    run. A cycle to start, then per key: beats, the accumulator, the requantizer; ``done`` with
    the last score.

    Contract 2's RECALL: the query buffer holds S and ``K_b`` is the folded key K'_b (``dat``
    words from ``kf_base + b * CB``, ``d`` elements, exponent ``kexp[b]``), still with the score
    scale of ``d_h``; no ``key`` ring.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    q_exp : In(stream.Signature(signed(EXP_W), always_ready=True))
    mac : Out(MacPort)
    dat, key, vexp, kexp : In(memory.ReadPort.Signature)
        (``dat``, ``key``: addresses only, the words go to the multiplier)
    score : Out(stream.Signature(signed(SCORE_BITS), always_ready=True))
    """

    def __init__(self, e):
        self._e = e
        c = e.config
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            "q_exp": In(stream.Signature(signed(EXP_W), always_ready=True)),
            "mac": Out(MacPort(e)),
            "dat": In(read_port(e.dat_depth, data.ArrayLayout(signed(8), e.P))),
            **({"key": In(read_port(c.n_slots * e.KB, data.ArrayLayout(signed(16), e.KP)))}
               if e.contract == 1 else {}),
            "vexp": In(read_port(e.ROWS, signed(8))),
            "kexp": In(read_port(c.n_slots, signed(EXP_W))),
            "score": Out(stream.Signature(signed(fixed.SCORE_BITS), always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        e, job, fetch = self._e, self.job, self.mac.fetch
        c, P, MQ = e.config, e.P, e.config.max_queries
        b = Signal(range(e.KMAX + 1))                   # key
        i_word = Signal(range(max(e.HB, e.AB, e.CB if e.contract == 2 else 0) + 1))   # beat: element of q
        i_lane = Signal(lane_bits(P))
        # K_b's first word
        ptr = Mux(job.attn, (MQ + b) * e.AB, b * e.KB if e.contract == 1 else e.kf_base + b * e.CB)
        q_exp = Signal(signed(EXP_W))
        with m.If(self.q_exp.valid):
            m.d.sync += q_exp.eq(self.q_exp.payload)
        m.d.comb += self.kexp.addr.eq(b)
        k_exp = Mux(job.attn, self.vexp.data, self.kexp.data)
        (mult_r, shift_r), (mult_a, shift_a) = fixed.score_scale(c.d_h), fixed.score_scale(c.head_dim)
        mult, sshift = Mux(job.attn, mult_a, mult_r), Mux(job.attn, shift_a, shift_r)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.next = "START"
            with m.State("START"):
                m.d.sync += [b.eq(0), i_word.eq(0), i_lane.eq(0)]
                m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += self.vexp.addr.eq(MQ + b)
                idx, first = element(P, i_word, i_lane), is_element(P, i_word, i_lane, 0)
                last = Mux(job.attn, is_element(P, i_word, i_lane, c.head_dim - 1),
                           is_element(P, i_word, i_lane, c.d_h - 1 if e.contract == 1 else c.d - 1))
                from_dat = [self.dat.addr.eq(ptr + i_word),
                            *beat(fetch, OperandA.QBUF, OperandB.DAT, i_lane, first, last, idx=idx)]
                if e.contract == 1:
                    with m.If(job.attn):
                        m.d.comb += from_dat
                    with m.Else():
                        m.d.comb += [self.key.addr.eq(ptr + e.key_word(i_word, i_lane)),
                                     *beat(fetch, OperandA.QBUF, OperandB.KEY, i_lane, first, last,
                                           klane=e.key_place(i_lane)[1], idx=idx)]
                else:
                    # (K'_b is int8 in dat like an attention K row: the same beats)
                    m.d.comb += from_dat
                m.d.sync += step_lane(P, i_word, i_lane)
                with m.If(fetch.last):
                    m.next = "ACC"
            with m.State("ACC"):
                m.d.comb += self.vexp.addr.eq(MQ + b)
                with m.If(self.mac.acc.valid):
                    m.d.comb += requantize(self.mac.rq, sshift - fixed.SCORE_FRAC - q_exp - k_exp, wide=1, m=mult)
                    m.next = "STORE"
            with m.State("STORE"):
                with m.If(self.mac.y.valid):
                    m.d.comb += [self.score.valid.eq(1), self.score.payload.eq(self.mac.y.payload)]
                    m.d.sync += [i_word.eq(0), i_lane.eq(0)]
                    with m.If(b == job.n_keys - 1):
                        m.d.comb += self.ctl.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += b.eq(b + 1)
                        m.next = "BEATS"
        return m


class WeightedSum(wiring.Component):
    """Per output element ``x`` (``d`` for RECALL, ``head_dim`` for ATTENTION):
    ``out[x] = sat16(round_shift(sum_b w_b V_b[x], 7))`` over the keys, with the weights from
    ``wm`` and ``V_b`` the memory slot ``b`` (RECALL) or V row ``b`` (ATTENTION, ``dat`` words
    from ``(MQ + MK) * AB``): ``n_keys`` beats, the accumulator, the requantizer, then the
    result written back into row ``a`` of the results in ``dat``, its low byte at
    ``out_base + 2 * (a * AB + word)`` and its high byte at the next word, one lane each.

    ``done`` in the cycle the last high byte is written.

    Members
    -------
    ctl : In(Control)
    job : In(job_layout)
    mac : Out(MacPort)
    dat : In(memory.ReadPort.Signature)
        ``dat``'s read port (addresses only: the words go to the multiplier).
    dat_w : In(memory.WritePort.Signature)
        ``dat``'s write port.
    """

    def __init__(self, e):
        self._e = e
        word = data.ArrayLayout(signed(8), e.P)
        super().__init__({
            "ctl": In(Control), "job": In(job_layout(e)),
            "mac": Out(MacPort(e)),
            "dat": In(read_port(e.dat_depth, word)),
            "dat_w": In(write_port(e.dat_depth, word, granularity=1)),
        })

    def elaborate(self, platform):
        m = Module()
        e, job, fetch = self._e, self.job, self.mac.fetch
        c, P, AB, CB = e.config, e.P, e.AB, e.CB
        MQ, MK = c.max_queries, c.max_keys
        o_word = Signal(range(max(CB, AB) + 1))           # element, as (word, lane)
        o_lane = Signal(lane_bits(P))
        i = Signal(range(e.KMAX + 1))                     # beat: key
        vptr = Mux(job.attn, (MQ + MK + i) * AB, e.mem_base + i * CB) + o_word     # V_i's word of element x
        res = Signal(signed(16))                          # a result between its two writes
        out_addr = e.out_base + 2 * (job.a * AB + o_word)
        lane_en = Const(1, P) << o_lane

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.ctl.start):
                    m.d.sync += [o_word.eq(0), o_lane.eq(0), i.eq(0)]
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += [self.dat.addr.eq(vptr),
                             *beat(fetch, OperandA.WM, OperandB.DAT, o_lane, first=i == 0, last=i == job.n_keys - 1,
                                   idx=i)]
                m.d.sync += i.eq(i + 1)
                with m.If(fetch.last):
                    m.next = "ACC"
            with m.State("ACC"):
                with m.If(self.mac.acc.valid):
                    m.d.comb += requantize(self.mac.rq, fixed.OUT_SHIFT)
                    m.next = "LO"
            with m.State("LO"):
                with m.If(self.mac.y.valid):
                    m.d.comb += [self.dat_w.addr.eq(out_addr), self.dat_w.en.eq(lane_en)]
                    m.d.comb += [self.dat_w.data[lane].eq(self.mac.y.payload[:8]) for lane in range(P)]
                    m.d.sync += res.eq(self.mac.y.payload)
                    m.next = "HI"
            with m.State("HI"):
                m.d.comb += [self.dat_w.addr.eq(out_addr | 1), self.dat_w.en.eq(lane_en)]
                m.d.comb += [self.dat_w.data[lane].eq(res[8:]) for lane in range(P)]
                m.d.sync += [i.eq(0), *step_lane(P, o_word, o_lane)]
                with m.If(Mux(job.attn, is_element(P, o_word, o_lane, c.head_dim - 1),
                              is_element(P, o_word, o_lane, c.d - 1))):
                    m.d.comb += self.ctl.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "BEATS"
        return m
