"""Export the MiniLM embedder to ONNX (fp32 + per-channel dynamic int8) and check it.

Runs inside the export environment ($CACHE/envs/export-<hash>/, torch + optimum-onnx),
started by scripts/acquire_models.py; never imported by the package.

    python export_embedder.py SRC_MODEL_DIR OUT_DIR

Writes OUT_DIR/model.onnx (fp32) and OUT_DIR/model-int8.onnx, then checks that the int8 model
agrees with the fp32 one (cosine >= 0.99 of mean-pooled, L2-normalised embeddings).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

MIN_COSINE = 0.99
# Every one of these must keep cosine >= MIN_COSINE.
CHECK_SENTENCES = [
    "The appliance answers questions from local documents without any network access.",
    "Retrieval-augmented generation quotes numbered sources and cites them.",
    "LoRA adapters change how a model behaves, not what it knows.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I configure the retrieval threshold?",
]
# Reported only: dynamic int8 loses a little more on one-word and non-English inputs (~0.98).
EDGE_SENTENCES = ["Hello", "x", "Wie spät ist es?"]


def export_fp32(src: Path, dest: Path) -> None:
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        main_export(
            str(src),
            output=tmp,
            task="feature-extraction",
            device="cpu",
            do_validation=False,
            no_post_process=False,
        )
        shutil.move(str(Path(tmp) / "model.onnx"), dest)


def quantize_int8(fp32: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(dest),
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


def embed(model: Path, tokenizer_json: Path, sentences: list[str]):  # type: ignore[no-untyped-def]
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_length=256)
    tok.enable_padding()
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    names = {i.name for i in sess.get_inputs()}
    (hidden,) = sess.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> int:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    fp32, int8 = out / "model.onnx", out / "model-int8.onnx"
    export_fp32(src, fp32)
    quantize_int8(fp32, int8)
    sentences = CHECK_SENTENCES + EDGE_SENTENCES
    a = embed(fp32, src / "tokenizer.json", sentences)
    b = embed(int8, src / "tokenizer.json", sentences)
    all_cos = (a * b).sum(axis=1)
    cos, edge = all_cos[: len(CHECK_SENTENCES)], all_cos[len(CHECK_SENTENCES) :]
    print(
        f"int8 vs fp32 cosine: sentences min {cos.min():.4f} mean {cos.mean():.4f};"
        f" short/non-English min {edge.min():.4f}",
        flush=True,
    )
    if cos.min() < MIN_COSINE:
        print(f"error: int8 embedder cosine {cos.min():.4f} < {MIN_COSINE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
