"""Sentence embeddings with onnxruntime and tokenizers (no torch at run time)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.errors import ModelError

__all__ = ["OnnxEmbedder", "physical_cores"]


def physical_cores() -> int:
    """Number of physical cores (hyper-threads folded), at least 1."""
    try:
        cores: set[tuple[str, str]] = set()
        phys = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                    cores.add((phys, core))
        if cores:
            return max(1, min(len(cores), len(os.sched_getaffinity(0))))
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


class OnnxEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-style ONNX model.

    Texts are truncated at ``max_tokens`` (special tokens included) and embedded in
    batches of similar length, so padding stays small. A dynamically quantized model
    computes one activation scale per input tensor, so a text's vector would depend on its
    batch-mates; such models (``per_text=True``) embed one text per call, which keeps every
    vector identical to the query-time vector of the same text.
    """

    def __init__(
        self,
        model_id: str,
        model_path: Path,
        tokenizer_path: Path,
        dim: int,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int = 0,
        per_text: bool = False,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self._id = model_id
        self._dim = dim
        self.max_tokens = max_tokens
        self.batch_size = 1 if per_text else batch_size
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"Cannot read the tokenizer {tokenizer_path}: {exc}.") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._counter = self._tokenizer
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Spinning worker threads keep a core busy after each call and slow the vector
        # search that follows a query embedding.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {model_path}: {exc}.") from exc
        self._inputs = {i.name for i in self._session.get_inputs()}

    @property
    def id(self) -> str:
        """Registry id of the embedder."""
        return self._id

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        """The underlying ``tokenizers.Tokenizer`` (no padding, no truncation)."""
        return self._counter

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text``, special tokens excluded."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into a (len(texts), dim) float32 array of unit vectors."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids[: self.max_tokens] for e in encodings]
        if any(len(e.ids) > self.max_tokens for e in encodings):
            sep = encodings[0].ids[-1]
            ids = [i if i[-1] == sep else [*i[:-1], sep] for i in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(input_ids)
            hidden = self._session.run(None, feed)[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[batch] = pooled / np.clip(norms, 1e-12, None)
        return out
