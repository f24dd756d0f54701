"""Checkpoint files: reading them with errors that name the file, and a manifest of their hashes.

A checkpoint is a folder of JSON and safetensors files (:func:`hmtx.model.hmt.save_checkpoint`,
:func:`hmtx.model.train.save_training_checkpoint`). ``manifest.json`` records the size and sha256
of every file that loading reads: every ``*.safetensors`` file in the folder plus the JSON files in
:data:`DATA_JSON` (reports and plots beside them -- eval results, loss curves, a README -- are not
covered, so they can be rewritten without touching the checkpoint). Writing a checkpoint writes the
manifest last (:func:`write_manifest`); reading one checks it first (:func:`verify_manifest`), so a
truncated, zeroed, replaced or bit-flipped file is refused with one line that names it, before any
tensor is used. New kinds of checkpoint file (adapter weights, ...) are covered automatically as
long as they are ``*.safetensors`` files written before the manifest: a covered file the manifest
does not list is an error too.

A folder without a manifest (written before manifests existed) still loads; :func:`verify_manifest`
returns False and prints one warning line. ``python -m hmtx.model.checkpoint_files FOLDER`` checks a
folder; ``--write`` (re)writes its manifest after a deliberate change.

Every error is a :class:`CheckpointError`, a ``ValueError``: the CLI's bad-input exit code (2).
"""

import hashlib
import json
import os
import sys

__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "DATA_JSON", "CheckpointError", "covered_files",
           "sha256_file", "write_manifest", "verify_manifest", "read_json", "load_safetensors"]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "hmtx-manifest-1"
# JSON files that loading reads (beside every *.safetensors file): the HMT config and the
# training state of a resumable checkpoint.
DATA_JSON = ("hmt_config.json", "train.json")

_verified: dict = {}          # realpath -> stat signature of the files last verified there
_warned: set = set()


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, damaged or inconsistent with its manifest."""


def covered_files(folder: str) -> list[str]:
    """Names (sorted) of the files in ``folder`` that the manifest must cover."""
    return sorted(n for n in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, n)) and (n.endswith(".safetensors") or n in DATA_JSON))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str) -> str:
    """Write ``folder/manifest.json`` over every covered file now in ``folder``; returns its path.
    Call it after the last file of a checkpoint is written."""
    files = {n: {"bytes": os.path.getsize(os.path.join(folder, n)), "sha256": sha256_file(os.path.join(folder, n))}
             for n in covered_files(folder)}
    path = os.path.join(folder, MANIFEST_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "files": files}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    _verified.pop(os.path.realpath(folder), None)
    return path


def _signature(folder: str, names) -> tuple:
    out = []
    for n in names:
        try:
            st = os.stat(os.path.join(folder, n))
            out.append((n, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((n, None))
    return tuple(out)


def verify_manifest(folder: str, required: bool = False) -> bool:
    """Check every file ``folder/manifest.json`` lists (present, same size, same sha256) and that
    every covered file is listed. True when checked; False (one warning line on stderr) when the
    folder has no manifest and ``required`` is false. Raises :class:`CheckpointError`."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        if required:
            raise CheckpointError(f"checkpoint {folder}: no {MANIFEST_FILE} (its file hashes cannot be checked)")
        key = os.path.realpath(folder)
        if key not in _warned:
            _warned.add(key)
            print(f"warning: checkpoint {folder} has no {MANIFEST_FILE}; its files' hashes are not checked "
                  f"(python -m hmtx.model.checkpoint_files --write {folder} adds one)", file=sys.stderr)
        return False
    manifest = read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict)
            or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
                       for v in files.values())):
        raise CheckpointError(f"{path}: not an {MANIFEST_FORMAT} manifest (damaged?)")
    names = sorted(set(files) | set(covered_files(folder)))
    key, sig = os.path.realpath(folder), _signature(folder, names) + (_signature(folder, [MANIFEST_FILE]),)
    if _verified.get(key) == sig:
        return True
    for n in names:
        p = os.path.join(folder, n)
        if n not in files:
            raise CheckpointError(f"{p}: not listed in {MANIFEST_FILE} (written after the checkpoint was? "
                                  f"if the file is intended: python -m hmtx.model.checkpoint_files --write {folder})")
        if os.path.basename(n) != n or not os.path.isfile(p):
            raise CheckpointError(f"{p}: listed in {MANIFEST_FILE} but missing")
        size = os.path.getsize(p)
        if size != files[n]["bytes"]:
            raise CheckpointError(f"{p}: {size} bytes, {MANIFEST_FILE} says {files[n]['bytes']} "
                                  f"(truncated or replaced)")
        if sha256_file(p) != files[n]["sha256"]:
            raise CheckpointError(f"{p}: sha256 differs from {MANIFEST_FILE} (the file is damaged or was "
                                  f"changed after the checkpoint was written)")
    _verified[key] = sig
    return True


def read_json(path: str):
    """The parsed JSON of ``path``; errors name the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not data.strip():
        raise CheckpointError(f"{path}: empty file (expected JSON)")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def load_safetensors(path: str, finite: bool = True) -> dict:
    """The tensors of a safetensors file; a missing, empty, truncated or garbled file, or (with
    ``finite``) a floating-point tensor holding NaN or infinity, raises :class:`CheckpointError`
    naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a safetensors file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if finite:
        for name, t in tensors.items():
            if t.is_floating_point() and t.numel() and not bool(t.isfinite().all()):
                bad = int((~t.isfinite()).sum())
                raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN/infinite value(s) (damaged)")
    return tensors


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hmtx.model.checkpoint_files",
                                description="Check a checkpoint folder against its manifest.json, or (--write) "
                                            "write the manifest for the files it now holds.")
    p.add_argument("folders", nargs="+")
    p.add_argument("--write", action="store_true", help="(re)write the manifest instead of checking it")
    args = p.parse_args(argv)
    for folder in args.folders:
        if not os.path.isdir(folder):
            print(f"error: {folder}: no such folder", file=sys.stderr)
            return 2
        try:
            if args.write:
                path = write_manifest(folder)
                print(f"{path}: {len(covered_files(folder))} files")
            else:
                verify_manifest(folder, required=True)
                print(f"{folder}: ok ({', '.join(covered_files(folder))})")
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
