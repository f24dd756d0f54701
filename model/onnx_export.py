"""Export the float memory recall to ONNX: (S [d], M [N, d], mask bool [N]) -> (P [d], probs [N]).

The graph has a fixed N; ``mask`` marks the filled slots, so it serves a partly filled cache too
(empty slots get probability 0). It is the float equation of :mod:`hmtx.model.recall`, for running
the recall on other runtimes; the fixed-point arithmetic is not an ONNX graph.
"""

import torch

from hmtx.model.recall import FloatRecallCore, MemoryRecall

__all__ = ["export_recall", "random_recall", "recall_from_checkpoint", "check_onnx", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ["s", "m", "mask"]
OUTPUT_NAMES = ["p", "probs"]


def random_recall(d: int, d_h: int, n_slots: int, seed: int = 0) -> MemoryRecall:
    return MemoryRecall(d, d_h, n_slots, generator=torch.Generator().manual_seed(seed))


def recall_from_checkpoint(folder: str) -> MemoryRecall:
    from hmtx.model.hmt import read_checkpoint

    config, tensors = read_checkpoint(folder)
    recall = MemoryRecall(config.d, config.d_h, config.cache_size)
    with torch.no_grad():
        recall.w_q.copy_(tensors["recall.w_q"])
        recall.w_k.copy_(tensors["recall.w_k"])
    return recall


def _example(recall: MemoryRecall, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(recall.d, generator=g)
    m = torch.randn(recall.n_slots, recall.d, generator=g)
    mask = torch.ones(recall.n_slots, dtype=torch.bool)
    return s, m, mask


def export_recall(recall: MemoryRecall, path: str) -> None:
    core = FloatRecallCore(recall).eval()
    torch.onnx.export(core, _example(recall), path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                      external_data=False, verbose=False)


def check_onnx(recall: MemoryRecall, path: str, s=None, m=None, mask=None) -> dict:
    """Max abs difference between onnxruntime and torch on (s, m, mask) (random if not given)."""
    import onnxruntime as ort

    ex = _example(recall, seed=1)
    s = ex[0] if s is None else s
    m = ex[1] if m is None else m
    mask = ex[2] if mask is None else mask
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    p_ort, probs_ort = sess.run(OUTPUT_NAMES, {"s": s.numpy(), "m": m.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        p, probs = FloatRecallCore(recall)(s, m, mask)
    return {"p": float((torch.from_numpy(p_ort) - p).abs().max()),
            "probs": float((torch.from_numpy(probs_ort) - probs).abs().max()),
            "p_ref_max": float(p.abs().max())}
