"""One memory recall, timed every way it can run: PyTorch float on this CPU (and CUDA when there
is a GPU), the golden integer model (numpy ``fixed.recall``, and ``GoldenDevice`` behind the wire
protocol), and the device at its synthesized Fmax (measured RTL cycles / Fmax).

The float recall is the same computation the device does, with the keys cached as the device
caches them: ``q = S W_q``, ``t = K q / sqrt(d_h)``, ``p = softmax(t)``, ``P = p M`` over a full
cache of N slots. The device figure counts compute cycles only; the UART time of the same
recall (command and response frames as the golden device encodes them, 10 bits per byte) is
reported next to it, because on a board the link, not the datapath, sets the pace.

    python -m hmtx.bench.recall_speed [--configs tiny,up5k,smollm] [--repeats 21]
"""

import argparse
import json
import math
import sys

import numpy as np

from hmtx.bench.stats import Stat, fmt_stat, time_calls
from hmtx.hw.board import DEFAULT_BAUD as UART_BAUD   # = hmtx.host.backends.DEFAULT_BAUD

__all__ = ["torch_float_recall", "golden_recall", "link_us", "calibrate_inner", "measure_config"]

BITS_PER_BYTE = 10         # 8N1


def calibrate_inner(fn, target_s: float = 0.02, sync=None) -> int:
    """Calls per sample so that one sample lasts about ``target_s`` (timer resolution, Python
    overhead of the loop)."""
    import time
    fn()
    if sync:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(100_000, int(target_s / dt)))


def _data(cfg, seed=0):
    rng = np.random.default_rng(seed)
    d, dh, n = cfg.d, cfg.d_h, cfg.n_slots
    return {"s": rng.normal(0, 1, d), "wq": rng.normal(0, 1 / math.sqrt(4 * d), (d, dh)),
            "wk": rng.normal(0, 1 / math.sqrt(4 * d), (d, dh)), "m": rng.normal(0, 1, (n, d))}


def torch_float_recall(cfg, device: str, repeats: int) -> dict:
    """Seconds per float32 recall (full cache) and per write (K_i = M_i W_k) on a torch device."""
    import torch

    x = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in _data(cfg).items()}
    keys = x["m"] @ x["wk"]
    scale = 1.0 / math.sqrt(cfg.d_h)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None

    @torch.inference_mode()
    def recall():
        q = x["s"] @ x["wq"]
        p = torch.softmax((keys @ q) * scale, dim=0)
        return p @ x["m"]

    @torch.inference_mode()
    def write():
        return x["m"][0] @ x["wk"]

    out = {}
    for name, fn in (("recall", recall), ("write", write)):
        inner = calibrate_inner(fn, sync=sync)
        out[name] = time_calls(fn, repeats=repeats, inner=inner, warmup=2, sync=sync)
    return out


def golden_recall(cfg, repeats: int, contract: int = 1) -> dict:
    """Seconds per recall of the golden models: ``fixed.recall`` (numpy arithmetic only;
    ``fixed.recall_folded`` for contract 2) and a RECALL frame through ``GoldenDevice.feed``
    (decode, checks, arithmetic, encode). Also returns the wire bytes of one RECALL and one
    WRITE_MEMORY exchange."""
    from hmtx.model import protocol as P
    from hmtx.model.golden_device import GoldenDevice
    from hmtx.model import fixed

    x = _data(cfg)
    qwq, qwk = fixed.quantize_weight(x["wq"]), fixed.quantize_weight(x["wk"])
    mm, me = fixed.quantize_bfp(x["m"])
    km, ke = fixed.project(qwk, mm, me)
    sm, se = fixed.quantize_bfp(x["s"])

    if contract == 2:
        kf, kfe = fixed.fold_key(qwq, km, ke)

        def arith():
            return fixed.recall_folded(sm, int(se), kf, kfe, mm, me, cfg.d_h)
    else:
        def arith():
            return fixed.recall(qwq, sm, int(se), km, ke, mm, me)

    dev = GoldenDevice(cfg, contract=contract)

    def ok(rsp: bytes, what: str) -> bytes:
        frames = P.FrameDecoder().feed(rsp)
        if len(frames) != 1 or P.decode_response(frames[0]).status != P.Status.OK:
            raise RuntimeError(f"golden device refused the benchmark's {what} on config {cfg.name}")
        return rsp

    for n, qw in enumerate((qwq, qwk)):
        for chunk in P.weight_chunks(n, qw):
            ok(dev.feed(P.encode_command(P.Op.LOAD_WEIGHTS, chunk)), "LOAD_WEIGHTS")
    write_cmd = P.encode_command(P.Op.WRITE_MEMORY, P.pack_vector_cmd(mm[0], int(me[0]), cfg.d))
    write_rsp = b""
    for i in range(cfg.n_slots):
        frame = P.encode_command(P.Op.WRITE_MEMORY, P.pack_vector_cmd(mm[i], int(me[i]), cfg.d))
        write_rsp = ok(dev.feed(frame), "WRITE_MEMORY")
    recall_cmd = P.encode_command(P.Op.RECALL, P.pack_vector_cmd(sm, int(se), cfg.d))
    recall_rsp = ok(dev.feed(recall_cmd), "RECALL")

    def framed():
        return dev.feed(recall_cmd)

    out = {}
    for name, fn in (("recall_arith", arith), ("recall_frame", framed)):
        out[name] = time_calls(fn, repeats=repeats, inner=calibrate_inner(fn), warmup=1)
    out["bytes"] = {"recall": len(recall_cmd) + len(recall_rsp), "write": len(write_cmd) + len(write_rsp)}
    return out


def link_us(n_bytes: int, baud: int = UART_BAUD) -> float:
    return n_bytes * BITS_PER_BYTE / baud * 1e6


def measure_config(cfg, repeats: int, device_cycles: dict | None, fmax: dict | None, contract: int = 1) -> dict:
    """Every recall timing of one config, and the ratios between them (same process, same run).

    ``device_cycles``: ``{"recall": cycles, "write": cycles}`` measured on the RTL (or None);
    ``fmax``: the config's entry of ``bench.fmax.fmax_table``.
    """
    import torch

    res = {"config": cfg.name, "n_keys": cfg.n_slots}
    tc = torch_float_recall(cfg, "cpu", repeats)
    res["torch_cpu_us"] = tc["recall"].scaled(1e6).to_dict()
    res["torch_cpu_write_us"] = tc["write"].scaled(1e6).to_dict()
    if torch.cuda.is_available():
        tg = torch_float_recall(cfg, "cuda", repeats)
        res["torch_cuda_us"] = tg["recall"].scaled(1e6).to_dict()
        res["torch_cuda_write_us"] = tg["write"].scaled(1e6).to_dict()
    else:
        res["torch_cuda_us"] = None
        res["torch_cuda_reason"] = "no CUDA device visible to torch on this machine"
    g = golden_recall(cfg, repeats, contract)
    res["golden_numpy_us"] = g["recall_arith"].scaled(1e6).to_dict()
    res["golden_frame_us"] = g["recall_frame"].scaled(1e6).to_dict()
    res["golden_recalls_per_s"] = g["recall_arith"].inverted().to_dict()
    res["wire_bytes"] = g["bytes"]
    res["uart_baud"] = UART_BAUD
    res["uart_us"] = {op: link_us(n) for op, n in g["bytes"].items()}
    f = (fmax or {}).get("fmax_mhz")
    res["fmax_mhz"] = f
    if device_cycles and f:
        res["device_us"] = device_cycles["recall"] / f
        res["device_write_us"] = device_cycles["write"] / f
        res["device_recalls_per_s"] = f * 1e6 / device_cycles["recall"]
        res["device_with_uart_us"] = res["device_us"] + res["uart_us"]["recall"]
        res["speedup_vs_torch_cpu"] = res["torch_cpu_us"]["median"] / res["device_us"]
        if res["torch_cuda_us"]:
            res["speedup_vs_torch_cuda"] = res["torch_cuda_us"]["median"] / res["device_us"]
    else:
        res["device_us"] = None
        res["device_reason"] = (fmax or {}).get("reason") or "no RTL cycle count"
    res["golden_vs_torch_cpu"] = res["golden_numpy_us"]["median"] / res["torch_cpu_us"]["median"]
    return res


def main(argv=None) -> int:
    from hmtx.model.configs import get_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,up5k,smollm")
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args(argv)
    for name in args.configs.split(","):
        r = measure_config(get_config(name), args.repeats, None, None)
        print(f"{name}: torch cpu {fmt_stat(r['torch_cpu_us'])} us, golden numpy "
              f"{fmt_stat(r['golden_numpy_us'])} us, golden frame {fmt_stat(r['golden_frame_us'])} us")
        print(json.dumps({k: v for k, v in r.items() if isinstance(v, (int, float, str))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
