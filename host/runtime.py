"""The HMT runtime: a document through the reference model, its memory on the device, checked.

:func:`run_document` streams a document segment by segment through four variants of the same
model: backbone only, HMT with float recall, HMT with the fixed-point recall (the reference),
and HMT whose memory writes and recalls execute on a :class:`hmtx.host.device.Device`. The
device variant talks to the device through :class:`CheckedDevice`, which checks every answer
on the spot against the golden arithmetic (:mod:`hmtx.model.fixed`) applied to the same
inputs, keeps a mirror of the device's cache, and after each segment reads back what the
segment changed in it (by default the slot it wrote; the whole cache every 16 segments and at the
end) and compares it with the mirror and with the fixed variant's own cache. By default the
memory write of a segment is posted and runs on the device while the host computes the next
segment's representation pass; its answer and the segment's cache check are collected and
checked just before the device is next needed (``overlap``, :func:`run_document`). The first
difference stops the run with a :class:`Mismatch` (segment, op, slot, field, element,
expected, got), and the device's inputs since its last reset are saved as a replayable case
(``hmtx replay FILE``).

Because the device's recall is bit-identical to the fixed recall, the device variant's
perplexity equals the fixed variant's exactly; the runtime checks that too.

The arithmetic contract comes from the device (``Device.contract``, INFO's protocol major): with
contract 2 the mirror holds the folded keys K'_i = ``fixed.fold_key(W_q, K_i)`` that the device
must store, recalls are checked against ``fixed.recall_folded``, and the model's fixed variant
runs contract 2 as well (docs/arithmetic.md section 10).
"""

import base64
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from hmtx.model import fixed
from hmtx.model.configs import EngineConfig
from hmtx.model.protocol import Op
from hmtx.model.ring import RingSlots

from .attention_tiles import CheckedAttention
from .mismatch import Mismatch, MismatchError, _b64, _first_diff, _np, _unb64

__all__ = ["Mismatch", "MismatchError", "CheckedDevice", "RunResult", "run_document",
           "save_case", "load_case", "replay_case", "CASE_FORMAT", "FULL_CHECK_EVERY"]

CASE_FORMAT = "hmtx-case-1"       # "contract" (default 1: cases from before protocol 2.0) is optional
# With the written-slot cache check, the whole cache is also read back after every K-th segment:
# a slot damaged behind the host's back is found within K segments (or by the next recall that
# it changes), for 1/K of the whole read-back's cost per segment (docs/runtime.md).
FULL_CHECK_EVERY = 16


# --- the checked device -----------------------------------------------------------------------
class CheckedDevice:
    """The recall model's device interface (``reset``, ``load_weights``, ``write``, ``recall``)
    on a real :class:`~hmtx.host.device.Device`, every answer checked against the golden
    arithmetic on a mirror of the device's cache.

    ``segment`` is set by the caller so that mismatches name it. ``log`` holds the device's
    inputs since its last reset (what a replayable case needs); ``ops_checked`` counts the
    device answers compared.

    ``contract`` (default: the device's, ``device.contract``, from INFO) is the arithmetic the
    answers are checked against: contract 1 stores K_i = project(W_k, M_i) and recalls with
    ``fixed.recall``; contract 2 stores K'_i = fold_key(W_q, K_i) and recalls with
    ``fixed.recall_folded``. Read-back mismatches of K'_i name the fields ``kf_mant``/``kf_exp``.

    With ``overlap=True`` a memory write is *posted* (``Device.write_memory(..., wait=False)``):
    the device computes K_n while the host goes on (the next segment's representation pass), and
    the answer is collected and checked -- slot and fill, exactly as a blocking write -- when the
    device is next needed: at the start of any other method here, or at :meth:`settle`.
    ``check_cache(..., defer=True)`` likewise waits until then, behind the write (the reference
    cache it is given is copied at once). The device sees the same commands in the same order
    either way, and every check names the segment that was current when its op was issued.

    ``probabilities`` (default True): whether each RECALL asks the device for the softmax
    probabilities (protocol 1.2 / 2.1; an older device always sends them). Without them the check
    compares what the answer holds -- n, P_n's exponent and every mantissa -- exactly; should P_n
    differ, the same RECALL is asked again with the probabilities (RECALL changes nothing on the
    device), so the mismatch reported is the one a check with them would report (the
    probabilities first, if they are wrong). What is not checked is an error confined to the
    probabilities that leaves P_n unchanged (docs/runtime.md, "Probabilities on request").
    """

    def __init__(self, device, config: EngineConfig, torch_check: bool = False, overlap: bool = False,
                 contract: int | None = None, probabilities: bool = True):
        self.device = device
        self.config = config
        dev_contract = getattr(device, "contract", 1)
        if contract is None:
            contract = dev_contract
        if contract not in (1, 2):
            raise ValueError(f"unknown contract {contract!r}; choose 1 or 2")
        if contract != dev_contract:
            raise ValueError(f"checking contract {contract} needs a device that computes it; "
                             f"{getattr(device, 'name', 'the device')} computes contract {dev_contract}")
        self.contract = contract
        self._k_names = ("k_mant", "k_exp") if contract == 1 else ("kf_mant", "kf_exp")
        self.torch_check = torch_check
        self.overlap = overlap
        self.probabilities = probabilities
        self.segment = None
        self.ops_checked = 0
        self.qw = None
        self.log = []
        self._posted = None             # the write in flight: (Pending, segment, m, e, k, ke, slot)
        self._deferred = None           # the cache check waiting behind it: (segment, reference, slots)
        # The earliest segment whose device answers are not all checked yet (a posted write or a
        # deferred check); it stays set when settling them failed.
        self.unchecked = None
        self._clear()

    def _clear(self):
        c = self.config
        self.m_mant = np.zeros((c.n_slots, c.d), np.int64)
        self.m_exp = np.zeros(c.n_slots, np.int64)
        # what the device must store next to M_i: K_i (contract 1) or K'_i (contract 2)
        self.k_mant = np.zeros((c.n_slots, c.d_h if self.contract == 1 else c.d), np.int64)
        self.k_exp = np.zeros(c.n_slots, np.int64)
        self.ring = RingSlots(c.n_slots)   # which slot the device's next write must go to

    @property
    def fill(self) -> int:
        return self.ring.fill

    @property
    def last_slot(self) -> int:
        """The slot the most recent write went to (a posted one included)."""
        return self._posted[6] if self._posted is not None else self.ring.last_slot

    def _mark(self, segment):
        if self.unchecked is None:
            self.unchecked = segment

    # -- split phase ---------------------------------------------------------------------------
    def settle(self) -> None:
        """Collect and check the posted write, then run the deferred cache check, if any (in the
        order they were issued). Every other method calls this first. If the write fails (device
        error or mismatch), its error is raised and the deferred check behind it is dropped."""
        posted, deferred = self._posted, self._deferred
        self._posted = self._deferred = None
        if posted is not None:
            self._finish_write(*posted)
        if deferred is not None:
            self._read_back(*deferred)
        self.unchecked = None

    # -- the device interface of hmtx.model.recall ----------------------------------------------
    def reset(self):
        self.settle()
        self.device.reset()
        self._clear()
        self.log = [{"op": "reset"}]
        self.ops_checked += 1

    def load_weights(self, qw_q, qw_k):
        self.settle()
        self.qw = [fixed.QuantWeight(_np(w.mant), int(w.exp), int(w.shift)) for w in (qw_q, qw_k)]
        self.log.append({"op": "load_weights", "segment": self.segment,
                         "weights": [{"mant": _b64(w.mant, np.int8), "exp": w.exp, "shift": w.shift,
                                      "shape": list(w.mant.shape)} for w in self.qw]})
        self.device.load_weights(*self.qw)
        st = self.device.status()
        if not (st.wq_loaded and st.wk_loaded):
            raise MismatchError(Mismatch(self.segment, "LOAD_WEIGHTS", None, "loaded flags", None, 3, st.flags))
        self.ops_checked += 1

    def write(self, m_mant, m_exp):
        self.settle()
        m, e = _np(m_mant).reshape(-1), int(_np(m_exp))
        self.log.append({"op": "write", "segment": self.segment, "m_mant": _b64(m, np.int8), "m_exp": e})
        if not self.overlap:
            answer = self.device.write_memory(m, e)
            k, ke = self._key(m, e)
            self._finish_write(answer, self.segment, m, e, k, ke)
            return
        pending = self.device.write_memory(m, e, wait=False)
        # The mirror's key, computed while the device computes its own; committed with the answer.
        k, ke = self._key(m, e)
        self._posted = (pending, self.segment, m, e, k, ke, self.ring.write_ptr)
        self._mark(self.segment)

    def _key(self, m, e):
        """What the device must store next to M_i: K_i, or K'_i = fold_key(W_q, K_i) (contract 2)."""
        k, ke = fixed.project(self.qw[1], m[None, :], np.array([e]))
        if self.contract == 2:
            k, ke = fixed.fold_key(self.qw[0], k, ke)
        return k[0], ke[0]

    def _finish_write(self, answer, segment, m, e, k, ke, _slot=None):
        """Check a write's answer ((slot, fill), or the Pending of a posted write) and commit it
        to the mirror; a device error leaves the mirror as it was."""
        slot, fill = answer.result() if hasattr(answer, "result") else answer
        want_slot = self.ring.write_ptr
        self.m_mant[want_slot], self.m_exp[want_slot] = m, e
        self.k_mant[want_slot], self.k_exp[want_slot] = k, ke
        self.ring.advance()
        _first_diff(segment, "WRITE_MEMORY", None, "slot", want_slot, slot)
        _first_diff(segment, "WRITE_MEMORY", None, "fill", self.fill, fill)
        self.ops_checked += 1

    def recall(self, s_mant, s_exp, probabilities: bool | None = None):
        """Recall on the device and check the answer; returns (p_mant, p_exp, probs), probs None
        when they were not asked for (``probabilities``, default :attr:`probabilities`) and the
        device did not send them."""
        self.settle()
        want_probs = self.probabilities if probabilities is None else bool(probabilities)
        s, e = _np(s_mant).reshape(-1), int(_np(s_exp))
        self.log.append({"op": "recall", "segment": self.segment, "s_mant": _b64(s, np.int8), "s_exp": e,
                         "probs": want_probs})
        answer = self.device.recall(s, e, probabilities=want_probs)
        p, pe, probs = answer
        n = self.fill
        d_h = self.config.d_h
        if self.contract == 2:
            wp, wpe, wprobs = fixed.recall_folded(s, e, self.k_mant[:n], self.k_exp[:n],
                                                  self.m_mant[:n], self.m_exp[:n], d_h)
        else:
            wp, wpe, wprobs = fixed.recall(self.qw[0], s, e, self.k_mant[:n], self.k_exp[:n],
                                           self.m_mant[:n], self.m_exp[:n])
        if self.torch_check:
            # The torch implementation the model's "fixed" variant uses, on the same integers.
            from hmtx.model import fixed_torch as ft
            t = torch.as_tensor
            if self.contract == 2:
                tp, tpe, tprobs = ft.recall_folded(t(s), t(e), t(self.k_mant[:n]), t(self.k_exp[:n]),
                                                   t(self.m_mant[:n]), t(self.m_exp[:n]), d_h)
            else:
                qw = ft.QuantWeight(t(self.qw[0].mant), self.qw[0].exp, self.qw[0].shift)
                tp, tpe, tprobs = ft.recall(qw, t(s), t(e), t(self.k_mant[:n]), t(self.k_exp[:n]),
                                            t(self.m_mant[:n]), t(self.m_exp[:n]))
            for name, a, b in (("probs", tprobs, wprobs), ("p_exp", tpe, wpe), ("p_mant", tp, wp)):
                _first_diff(self.segment, "MODEL", None, f"{name} (fixed_torch vs golden numpy)", b, _np(a))
        # n: the slots the device recalled over (sent with or without the probabilities)
        _first_diff(self.segment, "RECALL", None, "n", n, getattr(answer, "n", n))
        if probs is not None:
            _first_diff(self.segment, "RECALL", None, "probs", wprobs, probs)
        try:
            _first_diff(self.segment, "RECALL", None, "p_exp", wpe, pe)
            _first_diff(self.segment, "RECALL", None, "p_mant", wp, p)
        except MismatchError:
            if probs is None:
                # Name what a check with the probabilities would name: ask again with them (RECALL
                # leaves the device's state alone) and report them first if they are wrong too.
                again = self.device.recall(s, e, probabilities=True)
                if again[2] is not None:
                    _first_diff(self.segment, "RECALL", None, "probs", wprobs, again[2])
            raise
        self.ops_checked += 1
        return p, pe, probs

    # -- whole-cache check ---------------------------------------------------------------------
    def check_cache(self, reference=None, slots=None, defer: bool = False) -> None:
        """Read valid slots back from the device (``slots``, default every one); compare with the
        mirror and, if given, with a reference cache (``hmtx.model.recall.RecallCache`` of the
        fixed variant). The fill and write pointer are checked every time.

        ``defer=True``: do it when the device is next needed (:meth:`settle`), after a posted
        write's answer; the reference is copied now, the mismatch names the current segment."""
        if slots is not None:
            slots = [int(x) for x in slots]
        if defer:
            if self._deferred is not None:
                self.settle()
            if reference is not None:
                reference = SimpleNamespace(fill=reference.fill, **{
                    n: _np(getattr(reference, n)).copy() for n in ("m_mant", "m_exp", "k_mant", "k_exp")})
            self._deferred = (self.segment, reference, slots)
            self._mark(self.segment)
            return
        self.settle()
        self._read_back(self.segment, reference, slots)

    def _read_back(self, segment, reference, slots) -> None:
        st = self.device.status()
        _first_diff(segment, "STATUS", None, "fill", self.fill, st.fill)
        _first_diff(segment, "STATUS", None, "write pointer", self.ring.write_ptr, st.write_ptr)
        if reference is not None:
            _first_diff(segment, "MODEL", None, "reference fill", reference.fill, self.fill)
        if slots is None:
            slots = range(self.fill)
            self.log.append({"op": "check_cache", "segment": segment})
        else:
            bad = [x for x in slots if not 0 <= x < self.fill]
            if bad:
                raise ValueError(f"check_cache: slot(s) {bad} are not among the {self.fill} valid ones")
            self.log.append({"op": "check_cache", "segment": segment, "slots": slots})
        kn, ken = self._k_names
        for slot in slots:
            m, me, k, ke = self.device.read_slot(slot)
            for name, attr, want, got in (("m_exp", "m_exp", self.m_exp[slot], me),
                                          ("m_mant", "m_mant", self.m_mant[slot], m),
                                          (ken, "k_exp", self.k_exp[slot], ke), (kn, "k_mant", self.k_mant[slot], k)):
                if reference is not None:
                    ref = _np(getattr(reference, attr)[slot])
                    _first_diff(segment, "MODEL", slot, f"reference {name} (fixed model vs golden)", ref, want)
                _first_diff(segment, "READ_SLOT", slot, name, want, got)
            self.ops_checked += 1


# --- cases ----------------------------------------------------------------------------------
def save_case(path: str, config: EngineConfig, log: list, mismatch: Mismatch | None, error: str | None = None,
              context: dict | None = None, contract: int = 1) -> str:
    """Write a replayable case: the engine config, the arithmetic contract the device computed and
    the device inputs since its last reset."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": CASE_FORMAT, "config": config.to_dict(), "contract": contract, "ops": log,
                   "mismatch": asdict(mismatch) if mismatch else None, "error": error,
                   "context": context or {}}, f, indent=1)
    return path


def _save_case_or_say_why(res, path, *args) -> None:
    try:
        res.case_file = save_case(path, *args)
    except (OSError, TypeError, ValueError) as e:
        res.case_file = None
        res.case_error = f"{path}: {getattr(e, 'strerror', None) or e}"


def load_case(path: str) -> dict:
    """Read and validate a case file; anything of the wrong structure raises ValueError naming
    the file and the field (``hmtx replay`` exits 2 on it)."""
    try:
        with open(path, "rb") as f:
            case = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read case file ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(case, dict) or case.get("format") != CASE_FORMAT:
        raise ValueError(f"{path}: not an hmtx case file (format {case.get('format') if isinstance(case, dict) else None!r}, "
                         f"expected {CASE_FORMAT!r})")
    try:
        if not isinstance(case.get("config"), dict):
            raise TypeError("missing or not an object")
        case["config"] = EngineConfig(**case["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad engine config in case file ({e})") from None
    try:
        _check_case(case)
    except _CaseError as e:
        raise ValueError(f"{path}: {e}") from None
    case.setdefault("contract", 1)
    return case


class _CaseError(Exception):
    pass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _b64_bytes(where: str, s, n: int) -> None:
    if not isinstance(s, str):
        raise _CaseError(f"{where}: expected a base64 string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s, validate=True)
    except (ValueError, TypeError):
        raise _CaseError(f"{where}: not valid base64") from None
    if len(raw) != n:
        raise _CaseError(f"{where}: {len(raw)} bytes, the engine config needs {n}")


_OP_FIELDS = {"reset": (), "load_weights": ("weights",), "write": ("m_mant", "m_exp"),
              "recall": ("s_mant", "s_exp"), "check_cache": (),
              "attention": ("shape", "causal", "q_mant", "q_exp", "k_mant", "k_exp", "v_mant", "v_exp")}
_MISMATCH_FIELDS = ("segment", "op", "slot", "field", "element", "expected", "got")


def _check_case(case: dict) -> None:
    """The structure ``save_case`` writes, field by field (types, sizes, op order)."""
    cfg = case["config"]
    from hmtx.model.protocol import CONTRACTS, MAX_BODY
    contract = case.get("contract", 1)
    if not _is_int(contract) or contract not in CONTRACTS:
        raise _CaseError(f"'contract' must be one of {', '.join(map(str, CONTRACTS))}, got {contract!r}")
    for name in ("d", "d_h", "n_slots", "lanes", "head_dim", "max_queries", "max_keys"):
        if getattr(cfg, name) > 0xFFFF:
            raise _CaseError(f"config.{name} = {getattr(cfg, name)} does not fit the protocol's u16")
    longest = max(cfg.d + 3, 6 + cfg.d + 2 * cfg.d_h, 6 + 2 * cfg.d, 7 + 2 * cfg.d + 2 * cfg.n_slots)
    if longest > MAX_BODY:
        raise _CaseError(f"config {cfg.name!r}: its frames would exceed MAX_BODY={MAX_BODY} bytes")
    ops = case.get("ops")
    if not isinstance(ops, list):
        raise _CaseError(f"'ops' must be a list, got {type(ops).__name__}")
    weights_loaded = False
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise _CaseError(f"ops[{i}]: expected an object, got {type(op).__name__}")
        kind = op.get("op")
        if not isinstance(kind, str) or kind not in _OP_FIELDS:
            raise _CaseError(f"ops[{i}]: unknown op {kind!r} (expected one of {', '.join(_OP_FIELDS)})")
        where = f"ops[{i}] ({kind})"
        seg = op.get("segment")
        if seg is not None and not _is_int(seg):
            raise _CaseError(f"{where}: segment must be an integer or null, got {seg!r}")
        missing = [f for f in _OP_FIELDS[kind] if f not in op]
        if missing:
            raise _CaseError(f"{where}: missing {', '.join(missing)}")
        if kind == "check_cache" and op.get("slots") is not None and (
                not isinstance(op["slots"], list) or not all(_is_int(x) and 0 <= x < cfg.n_slots for x in op["slots"])):
            raise _CaseError(f"{where}: 'slots' must be a list of slot numbers below {cfg.n_slots}")
        if kind == "load_weights":
            ws = op["weights"]
            if not isinstance(ws, list) or len(ws) != 2:
                raise _CaseError(f"{where}: 'weights' must be a list of two matrices (W_q, W_k)")
            for j, w in enumerate(ws):
                wj = f"{where}: weights[{j}]"
                if not isinstance(w, dict) or not all(k in w for k in ("mant", "exp", "shift", "shape")):
                    raise _CaseError(f"{wj}: expected an object with mant, exp, shift, shape")
                if not (_is_int(w["exp"]) and _is_int(w["shift"])):
                    raise _CaseError(f"{wj}: exp and shift must be integers")
                if w["shape"] != [cfg.d, cfg.d_h]:
                    raise _CaseError(f"{wj}: shape {w['shape']!r}, the engine config's is [{cfg.d}, {cfg.d_h}]")
                _b64_bytes(f"{wj}.mant", w["mant"], cfg.d * cfg.d_h)
            weights_loaded = True
        elif kind in ("write", "recall"):
            mant, exp = _OP_FIELDS[kind]
            _b64_bytes(f"{where}: {mant}", op[mant], cfg.d)
            if not _is_int(op[exp]):
                raise _CaseError(f"{where}: {exp} must be an integer, got {op[exp]!r}")
            if not weights_loaded:
                raise _CaseError(f"{where}: comes before any load_weights (the case cannot be replayed)")
            if kind == "recall" and not isinstance(op.get("probs", True), bool):
                raise _CaseError(f"{where}: probs must be true or false, got {op['probs']!r}")
        elif kind == "attention":
            _check_attention_op(where, op, cfg)
    mm = case.get("mismatch")
    if mm is not None:
        if not isinstance(mm, dict) or not all(k in mm for k in _MISMATCH_FIELDS):
            raise _CaseError(f"'mismatch' must be null or an object with {', '.join(_MISMATCH_FIELDS)}")
        if mm["element"] is not None and not _is_int(mm["element"]):
            raise _CaseError(f"mismatch.element must be an integer or null, got {mm['element']!r}")
    err = case.get("error")
    if err is not None and not isinstance(err, str):
        raise _CaseError(f"'error' must be null or a string, got {type(err).__name__}")


def _check_attention_op(where: str, op: dict, cfg) -> None:
    shape = op["shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(x) and 1 <= x <= fixed.KEYS_MAX for x in shape)):
        raise _CaseError(f"{where}: 'shape' must be [queries, keys], each in 1..{fixed.KEYS_MAX}, got {shape!r}")
    if not isinstance(op["causal"], bool):
        raise _CaseError(f"{where}: causal must be true or false, got {op['causal']!r}")
    for rows, name in ((shape[0], "q"), (shape[1], "k"), (shape[1], "v")):
        _b64_bytes(f"{where}: {name}_mant", op[f"{name}_mant"], rows * cfg.head_dim)
        exps = op[f"{name}_exp"]
        if not (isinstance(exps, list) and len(exps) == rows and all(_is_int(x) for x in exps)):
            raise _CaseError(f"{where}: {name}_exp must be a list of {rows} integers")


def replay_case(case: dict, device) -> CheckedDevice:
    """Run a case's ops on ``device`` with every answer checked; raises MismatchError at the first
    difference. Returns the checked device (``ops_checked``). The device must compute the case's
    contract (ValueError otherwise, before any op is sent)."""
    cfg = case["config"]
    chk = CheckedDevice(device, cfg, contract=case.get("contract", 1))
    for op in case["ops"]:
        chk.segment = op.get("segment")
        kind = op.get("op")
        if kind == "reset":
            chk.reset()
        elif kind == "load_weights":
            qws = [fixed.QuantWeight(_unb64(w["mant"], np.int8).reshape(w["shape"]), w["exp"], w["shift"])
                   for w in op["weights"]]
            chk.load_weights(*qws)
        elif kind == "write":
            chk.write(_unb64(op["m_mant"], np.int8), op["m_exp"])
        elif kind == "recall":
            # as it was sent (cases from before protocol 1.2 asked for the probabilities always)
            chk.recall(_unb64(op["s_mant"], np.int8), op["s_exp"], probabilities=op.get("probs", True))
        elif kind == "check_cache":
            chk.check_cache(slots=op.get("slots"))
        elif kind == "attention":
            nq, nk = op["shape"]
            hd = cfg.head_dim
            keep = fixed.causal_mask(nq, nk) if op["causal"] else np.ones((nq, nk), bool)
            CheckedAttention(chk).head(_unb64(op["q_mant"], np.int8).reshape(nq, hd), op["q_exp"],
                                       _unb64(op["k_mant"], np.int8).reshape(nk, hd), op["k_exp"],
                                       _unb64(op["v_mant"], np.int8).reshape(nk, hd), op["v_exp"], keep,
                                       where=op.get("where", "head"))
        else:
            raise ValueError(f"case file: unknown op {kind!r}")
    return chk


# --- the document run ---------------------------------------------------------------------------
@dataclass
class RunResult:
    segments: int = 0
    tokens: int = 0
    ops_checked: int = 0
    mismatch: Mismatch | None = None
    error: str | None = None
    case_file: str | None = None
    case_error: str | None = None          # why the case could not be saved (case_file is None then)
    device_cycles: int = 0
    wall_s: float = 0.0
    nll: dict = field(default_factory=dict)           # variant -> [per segment]
    counts: list = field(default_factory=list)        # scored tokens per segment
    recall_probs: list = field(default_factory=list)  # per segment: {past segment: weight} or None
    offload_attention: str | None = None              # the SPEC whose heads ran on the device
    attention_heads: int = 0                          # head-passes computed on the device, checked
    attention_ops: int = 0                            # ATTN_PASS ops among them

    # hmt_norecall: the ablation of what the device computes (memory token instead of every P_n),
    # so that the summary can say what the recall itself is worth.
    VARIANTS = ("backbone", "hmt_norecall", "hmt_float", "hmt_fixed", "hmt_device")

    def ppl(self, variant: str) -> float | None:
        if variant not in self.nll:
            return None
        n = sum(self.counts[: len(self.nll[variant])])
        return math.exp(sum(self.nll[variant]) / n) if n else None

    def ppl_per_segment(self, variant: str) -> list:
        return [math.exp(x / c) for x, c in zip(self.nll.get(variant, []), self.counts)]


def _nll(logits, ids, start, n) -> tuple[float, int]:
    targets = ids[start + 1: start + n + 1]
    logp = torch.log_softmax(logits[: targets.numel()].float(), dim=-1)
    return -float(logp.gather(1, targets[:, None]).sum()), int(targets.numel())


@torch.no_grad()
def run_document(model, ids: torch.Tensor, device, config: EngineConfig, segments: int, *,
                 case_path: str | None = None, progress=None, before_segment=None,
                 fixed_stream: bool = True, cache_check: str = "written", full_check_every: int = FULL_CHECK_EVERY,
                 overlap: bool = True, probabilities: bool = False, offload_attention: str | None = None) -> RunResult:
    """Run the first ``segments`` segments of ``ids`` (see the module docstring).

    ``fixed_stream=False`` skips the separate fixed-recall variant (two backbone passes per
    segment): the device's answers are still checked op by op against the golden arithmetic
    (numpy) and the torch fixed-point implementation on the same inputs, so the device variant
    *is* the fixed variant, but its PPL is then not recomputed independently.

    ``cache_check="written"`` (default) reads back, after each segment, the slot written in it (its
    M_n and K_n: everything a segment changes in the cache; STATUS's fill and write pointer are
    checked every time) and the whole cache after every ``full_check_every``-th segment (0: only
    after the last) and after the last; ``"full"`` reads the whole cache after every segment. On a serial link
    the whole read-back is most of the bytes per segment at a filled cache (docs/runtime.md, "How
    much of the cache is read back").

    ``probabilities=False`` (default) has each RECALL ask the device for P_n and n only, not the
    softmax probabilities (protocol 1.2 / 2.1; :class:`CheckedDevice`): ``result.recall_probs`` is
    then None for every segment (unless the device is older and sends them anyway). True: asked
    for on every recall and checked.

    ``overlap=True`` (default) lets the device work while the host computes: segment n's memory
    write is posted (:class:`CheckedDevice` with ``overlap``), and its answer and segment n's
    cache check are collected and checked when the device is next needed -- segment n+1's
    RECALL, after its representation pass and the other variants' passes (segment 1, which
    recalls nothing, at its own write), or after the loop for the last segment. The device gets
    the same commands in the same order, every check is made, per segment and exactly as
    without overlap, and a mismatch names the segment whose op it was; only the host's
    order of computing and checking changes. ``overlap=False`` checks each segment before the
    next one starts (the order before split-phase writes; for debugging).

    The device's arithmetic contract (``device.contract``, from its INFO) is the one the fixed and
    device variants run (their caches are made with it; the model's ``recall.contract`` is left as
    it was), so the device variant equals the fixed variant exactly under either contract.

    ``offload_attention`` (a SPEC, ``model.attention_offload``): the backbone's attention of those
    layers and heads runs in the contract's arithmetic in every variant -- on the device, in
    ATTN_PASS tiles, every answer checked (``hmtx.host.attention_tiles``), for the device variant;
    ``fixed_torch.attend`` for the others -- so the variants compare as they do without it and the
    device variant still equals the fixed one bit for bit. A device without ATTN_PASS (protocol
    < 1.3 / 2.2: the serial engine's gateware) is refused before the first segment.

    ``progress(segment, result)`` is called after each segment; ``before_segment(segment)``
    before it (fault injection hooks in there). With ``overlap``, when ``before_segment(n)`` and
    ``progress(n - 1, ...)`` run, segment n-1's write may still be in flight and its cache
    check not yet made: a fault armed there for "the next WRITE_MEMORY / READ_SLOT answer" hits
    segment n-1's. Device errors (DeviceError, ProtocolError,
    ConnectionError) propagate after the case has been saved, with the partial result as the
    exception's ``run_result`` attribute; a mismatch ends the run and is returned in
    ``result.mismatch``. Saving the case never raises: a case that cannot be written leaves
    ``result.case_file`` None and says why in ``result.case_error``, so the report survives it.
    """
    hc = model.config
    if (hc.d, hc.d_h, hc.cache_size) != (config.d, config.d_h, config.n_slots):
        raise ValueError(f"HMT sizes (d={hc.d}, d_h={hc.d_h}, N={hc.cache_size}) do not match engine config "
                         f"{config.name!r} (d={config.d}, d_h={config.d_h}, N={config.n_slots})")
    if not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a positive integer, got {segments!r}")
    if cache_check not in ("full", "written"):
        raise ValueError(f"cache_check must be 'full' or 'written', got {cache_check!r}")
    if not isinstance(full_check_every, int) or isinstance(full_check_every, bool) or full_check_every < 0:
        raise ValueError(f"full_check_every must be an integer >= 0, got {full_check_every!r}")
    b = hc.tokens_per_segment
    ids = torch.as_tensor(ids, dtype=torch.long, device=model.device).reshape(-1)
    if ids.numel() < b * segments:
        raise ValueError(f"document has {ids.numel()} tokens, {segments} segments need {b * segments} "
                         f"(B = L - 2 - k = {b} per segment)")
    ids = ids[: b * segments]
    t0 = time.monotonic()
    variants = RunResult.VARIANTS if fixed_stream else tuple(v for v in RunResult.VARIANTS if v != "hmt_fixed")
    res = RunResult(nll={v: [] for v in variants})
    contract = getattr(device, "contract", 1)
    chk = CheckedDevice(device, config, torch_check=not fixed_stream, overlap=overlap, contract=contract,
                        probabilities=probabilities)
    cycles0 = device.cycles().total
    # The caches take the contract when they are made: the fixed variant computes what the device does.
    model_contract, model.recall.contract = model.recall.contract, contract
    try:
        states = {
            "backbone": model.new_state("backbone"),
            "hmt_norecall": model.new_state("hmt_norecall"),
            "hmt_float": model.new_state("hmt", "float"),
            "hmt_fixed": model.new_state("hmt", "fixed") if fixed_stream else None,
            "hmt_device": model.new_state("hmt", "device", hw=chk),
        }
    finally:
        model.recall.contract = model_contract
    states = {v: s for v, s in states.items() if s is not None}
    streams = {v: model.segments(s, ids, final=True) for v, s in states.items()}
    heads_on_device, attention = _offload(model, device, config, chk, offload_attention)
    res.offload_attention = offload_attention
    try:
        for seg in range(segments):
            chk.segment = seg
            if before_segment is not None:
                before_segment(seg)
            outs = {}
            for v in variants:
                with heads_on_device(v):
                    outs[v] = next(streams[v])
            dev, ref = outs["hmt_device"], outs.get("hmt_fixed")
            if ref is not None and dev.recalled is not None and not torch.equal(dev.recalled, ref.recalled):
                i = int((dev.recalled != ref.recalled).nonzero()[0, 0])
                raise MismatchError(Mismatch(seg, "MODEL", None, "P_n (device variant vs fixed variant)", i,
                                             float(ref.recalled[i]), float(dev.recalled[i])))
            whole = (cache_check == "full" or seg == segments - 1
                     or (full_check_every and (seg + 1) % full_check_every == 0))
            # With overlap this waits for the device's next use (segment seg+1's recall).
            chk.check_cache(states["hmt_fixed"].cache if fixed_stream else None,
                            slots=None if whole else [chk.last_slot], defer=overlap)
            for v, out in outs.items():
                nll, count = _nll(out.logits, ids, seg * b, out.ids.numel())
                res.nll[v].append(nll)
            res.counts.append(count)
            if dev.probs is not None:
                weights = {}
                for slot, p in enumerate(dev.probs.tolist()):
                    weights[dev.slot_segment[slot]] = p
                res.recall_probs.append(weights)
            else:
                res.recall_probs.append(None)
            res.segments = seg + 1
            res.ops_checked = chk.ops_checked
            if progress is not None:
                progress(seg, res)
        chk.settle()                                # the last segment's write and cache check
        res.ops_checked = chk.ops_checked
        if fixed_stream and res.nll["hmt_device"] != res.nll["hmt_fixed"]:
            seg = next(i for i, (a, c) in enumerate(zip(res.nll["hmt_device"], res.nll["hmt_fixed"])) if a != c)
            raise MismatchError(Mismatch(seg, "MODEL", None, "segment NLL (device vs fixed variant)", None,
                                         res.nll["hmt_fixed"][seg], res.nll["hmt_device"][seg]))
    except MismatchError as e:
        res.mismatch = e.mismatch
        _keep_checked(res, chk)
    except Exception as e:
        _keep_checked(res, chk)
        res.error = f"{type(e).__name__}: {e}"
        if case_path:
            _save_case_or_say_why(res, case_path, config, chk.log, None, res.error, None, chk.contract)
        try:
            e.run_result = res
        except AttributeError:
            pass
        raise
    finally:
        res.ops_checked = chk.ops_checked
        if attention is not None:
            res.attention_heads, res.attention_ops = attention.heads, attention.ops
        res.tokens = sum(res.counts)
        res.wall_s = time.monotonic() - t0
    if res.mismatch is not None and case_path:
        _save_case_or_say_why(res, case_path, config, chk.log, res.mismatch, None, None, chk.contract)
    try:
        res.device_cycles = device.cycles().total - cycles0
    except Exception:
        if res.mismatch is None:
            raise
    return res


def _offload(model, device, config: EngineConfig, chk: CheckedDevice, spec: str | None):
    """(``ctx(variant)``, the :class:`CheckedAttention` or None): the context a variant's segment
    runs in -- with ``spec``'s heads in the contract (on the device for ``hmt_device``), a no-op
    without a spec -- and the checker that counts the device's heads and ATTN_PASS ops."""
    if not spec:
        return (lambda variant: contextlib.nullcontext()), None
    from hmtx.model.attention_offload import offloaded_attention, parse_offload_spec

    lm = model.lm
    n_heads = lm.config.num_attention_heads
    head_dim = getattr(lm.config, "head_dim", None) or lm.config.hidden_size // n_heads
    parse_offload_spec(spec, lm.config.num_hidden_layers, n_heads)       # ValueError names a bad item
    if head_dim != config.head_dim:
        raise ValueError(f"--offload-attention: the backbone's heads are {head_dim} wide, the engine config "
                         f"{config.name!r} computes heads of head_dim = {config.head_dim}")
    if not getattr(device, "attn_pass_ok", False):
        v = getattr(device, "device_info", None)
        raise ValueError(f"--offload-attention needs ATTN_PASS (protocol 1.3 / 2.2); {getattr(device, 'name', 'the device')} "
                         f"speaks {'%d.%d' % v.version if v else 'an older protocol'} (the serial engine's gateware does not "
                         f"implement it: use the lane engine's, or --device golden)")
    att = CheckedAttention(chk)

    def on_device(layer, head, qm, qe, km, ke, vm, ve, keep):
        return att.head(qm.cpu().numpy(), qe.cpu().numpy(), km.cpu().numpy(), ke.cpu().numpy(), vm.cpu().numpy(),
                        ve.cpu().numpy(), keep.cpu().numpy(), where=f"layer {layer} head {head}")

    def ctx(variant):
        return offloaded_attention(lm, spec, head_fn=on_device if variant == "hmt_device" else None)

    return ctx, att


def _keep_checked(res: RunResult, chk: CheckedDevice) -> None:
    """After a run stopped early: keep in ``res`` only the segments whose device answers were all
    checked (with overlap, a segment's write and cache check complete during the next one), so
    that the partial result is the same with overlap on or off."""
    n = chk.unchecked
    if n is not None and n < len(res.counts):
        del res.counts[n:]
        del res.recall_probs[n:]
        for v in res.nll.values():
            del v[n:]
        res.segments = n
