#!/usr/bin/env python3
"""Copy a trained LoRA adapter into models/adapters/<id>/ so it can be committed.

The run must have been registered by ``appliance train`` (same ``APPLIANCE_HOME``): its
adapter, training configuration and metrics are copied, a few held-out conversations go to
``parity.jsonl`` (setup's parity check), and ``lineage.json`` records the base (id, sha256),
the data (sha256, examples, licence note), the LoRA configuration, metrics, parity, the
sha256 of every file and the commands that reproduce it. Setup (``appliance models
build``) then merges, converts, quantizes and registers it as a packaged model.

    APPLIANCE_HOME=DIR .venv/bin/python scripts/publish_adapter.py RUN_ID --id ID \\
        --description TEXT --data-note TEXT --reproduce CMD [--reproduce CMD ...] [--default]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Publish the adapter; print where it went."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_id", help="id the model was registered under by `appliance train`")
    p.add_argument("--id", dest="out_id", required=True, help="id of the packaged model")
    p.add_argument("--description", required=True)
    p.add_argument("--data-note", required=True, help="where the data comes from; licence")
    p.add_argument("--reproduce", action="append", default=[],
                   help="a command of the reproduction recipe (repeat, in order)")
    p.add_argument("--default", action="store_true",
                   help="mark it the default fine-tuned model (hybrid mode)")
    p.add_argument("--parity-examples", type=int, default=4)
    args = p.parse_args(argv)

    from appliance.config import load_settings
    from appliance.train.packaged import publish_adapter

    dest = publish_adapter(
        load_settings(), args.run_id, REPO / "models" / "adapters", out_id=args.out_id,
        description=args.description, reproduce=args.reproduce, data_note=args.data_note,
        parity_examples=args.parity_examples, default=args.default,
    )
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"published {args.run_id} -> {dest} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
