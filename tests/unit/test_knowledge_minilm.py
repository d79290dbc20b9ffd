"""The MiniLM embedder: the reference vectors of all-MiniLM-L6-v2, normalised, cached."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InputError
from models.knowledge.minilm import MiniLMEmbedder, default_model_path

pytestmark = [pytest.mark.unit, pytest.mark.slow]

TEXTS = [
    "What time do you open on Saturday?",
    "How much is a flu shot without insurance?",
    "Parking at the main clinic is free. The lot is behind the building, with its entrance on "
    "Cedar Street, and there are six accessible spaces next to the main entrance.",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_vectors_are_384_d_unit_float32(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_batched_and_single_embeddings_agree(embedder: MiniLMEmbedder) -> None:
    batch = embedder.embed(TEXTS)  # padded to the longest text
    for text, row in zip(TEXTS, batch, strict=True):
        np.testing.assert_allclose(embedder.embed([text])[0], row, atol=1e-5)


def test_meaning_decides_similarity(embedder: MiniLMEmbedder) -> None:
    q, paraphrase, unrelated = embedder.embed([
        "When are you open on the weekend?", "What are your Saturday hours?",
        "What is the capital of France?",
    ])
    assert q @ paraphrase > 0.6
    assert q @ unrelated < 0.3


def test_repeated_queries_come_from_the_cache(embedder: MiniLMEmbedder) -> None:
    first = embedder.embed(["Do you take walk-ins?"])
    second = embedder.embed(["Do you take walk-ins?"])
    assert np.shares_memory(first, second) or np.array_equal(first, second)
    assert "Do you take walk-ins?" in embedder._cache


def test_cache_is_bounded() -> None:
    small = MiniLMEmbedder(cache_size=2)
    for text in ("one", "two", "three"):
        small.embed([text])
    assert list(small._cache) == ["two", "three"]


def test_a_single_string_is_rejected(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(InputError, match="list of texts"):
        embedder.embed("not a list")  # type: ignore[arg-type]


def test_matches_the_reference_implementation(embedder: MiniLMEmbedder) -> None:
    """sentence-transformers' recipe for this model: BERT, mean pooling, L2 normalisation."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    path = str(default_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    np.testing.assert_allclose(embedder.embed(TEXTS), expected.numpy(), atol=1e-4)
