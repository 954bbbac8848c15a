"""`bintally serve` with one setting changed from outside, to measure what it would give (nothing in bintally is edited).

    .venv/bin/python benchmarks/serving/serve_variant.py --no-spin -- serve --model EXPORT --port 8080 --threads 2

--no-spin  ONNX Runtime sessions get `session.intra_op.allow_spinning` = 0: the intra-op worker threads sleep
           between parallel sections instead of spinning (its default), so they leave the cores to the decode
           threads and the event loop of the same process.
"""

from __future__ import annotations

import sys


def no_spin() -> None:
    import onnxruntime as ort

    original = ort.InferenceSession

    class NoSpinSession(original):
        def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs):
            sess_options = sess_options or ort.SessionOptions()
            sess_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            super().__init__(path_or_bytes, sess_options, *args, **kwargs)

    ort.InferenceSession = NoSpinSession


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    flags, rest = argv[:split], argv[split + 1:]
    if "--no-spin" in flags:
        no_spin()
    sys.argv = ["bintally", *rest]
    from bintally.cli.main import main as bintally_main

    bintally_main()


if __name__ == "__main__":
    main()
