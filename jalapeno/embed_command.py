"""``jalapeno embed``: all-MiniLM-L6-v2 sentence embeddings computed on the simulated RTL.

Each sentence is a request to the hardware scheduler, which batches them; every GEMM,
softmax, LayerNorm and GELU runs on the core (see ``jalapeno/minilm/executor.py``).
Prints one line per sentence (the 384 values), or with ``--json`` one object::

    {"embeddings": [[384 floats], ...], "stats": {"cycles": ..., "mac_utilization": ...,
     "batches": ..., "rows_per_batch": [...], ...}}

Problems with the input (no sentence, an empty one, an unknown dtype or target) are one
line on stderr and exit status 2.
"""

import json
import sys


__all__ = ["add_embed_parser"]


class _UsageError(Exception):
    pass


def _say(text):
    print(f"jalapeno: {text}", file=sys.stderr, flush=True)


def _embed(args):
    from .minilm.weights import ModelNotInstalledError
    try:
        if not args.sentences:
            raise _UsageError("give at least one SENTENCE")
        if any(not s.strip() for s in args.sentences):
            raise _UsageError("a SENTENCE is empty")
        if args.target != "sim":
            raise _UsageError(f"--target {args.target}: MiniLM needs its 22 MB of weights in the "
                              "core's external memory; only the simulated core ('sim') has it")
        from sim.core_model import PRESETS
        core = args.core or ("full" if args.dtype == "e4m3" else "int8")
        if args.dtype == "e4m3" and not PRESETS[core].fp8:
            raise _UsageError(f"--dtype e4m3 needs a core with the FP8 modes (--core full), "
                              f"not --core {core}")
        from .minilm.quantize import load_or_build
        from .minilm.service import embed_sentences, open_simulator
        progress = None if args.quiet else _say
        if progress:
            progress(f"loading the {args.dtype.upper()} model (built and cached on first use)")
        model = load_or_build(args.dtype)
        transport, accelerator = open_simulator(core, progress=progress)
        with transport:
            embeddings, stats = embed_sentences(accelerator, model, args.sentences,
                                                progress=progress)
    except _UsageError as error:
        print(f"jalapeno embed: {error}", file=sys.stderr)
        return 2
    except (ModelNotInstalledError, ValueError, NotImplementedError) as error:
        print(f"jalapeno embed: {error}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({"embeddings": [[float(v) for v in row] for row in embeddings],
                   "stats": stats.as_dict()}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for sentence, row in zip(args.sentences, embeddings):
            print(f"{sentence}\t" + " ".join(f"{v:.6f}" for v in row))
        s = stats.as_dict()
        _say(f"{s['sentences']} sentences, {s['tokens']} tokens, {s['batches']} batches "
             f"(rows {s['rows_per_batch']}), {s['cycles']:,} cycles, MAC utilization "
             f"{s['mac_utilization']:.3f}")
    return 0


def add_embed_parser(sub):
    p = sub.add_parser("embed", help="sentence embeddings (all-MiniLM-L6-v2) on the simulated core")
    p.add_argument("sentences", nargs="*", metavar="SENTENCE")
    p.add_argument("--dtype", choices=("int8", "e4m3"), default="int8",
                   help="quantized program (default: int8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--target", default="sim", help="where to run (only 'sim')")
    p.add_argument("--core", default=None, choices=("int8", "full", "small"),
                   help="core configuration of the simulation (default: int8, the 16 x 16 "
                        "core without FP8 modes, for --dtype int8; full, with them, for "
                        "--dtype e4m3; small: 4 x 4)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_embed)
    return p
