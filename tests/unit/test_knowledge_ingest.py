"""Turning document folders into passages: splitting, Q&A files, and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.loader import knowledge_dir, load_config
from models.errors import InputError
from models.knowledge.base import Document
from models.knowledge.ingest import ingest_directory, load_documents, split_context

pytestmark = pytest.mark.unit

MARKDOWN = """# Hours

## Weekdays
We open at **7:30 a.m.** on weekdays.

We close at 7 p.m. See [the map](https://example.org/map) for directions.

## Payment
We accept:

- cards
- cash
- checks

Plain trailing paragraph.
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_markdown_is_split_by_paragraph_with_heading_context(tmp_path: Path) -> None:
    docs = load_documents(write(tmp_path / "clinic.md", MARKDOWN))
    bodies = [split_context(d.text) for d in docs]
    assert bodies[0] == ("Hours - Weekdays", "We open at 7:30 a.m. on weekdays.")
    assert bodies[1] == ("Hours - Weekdays",
                         "We close at 7 p.m. See the map for directions.")  # link text kept
    assert bodies[2] == ("Hours - Payment", "We accept: cards, cash and checks.")  # list + intro
    assert bodies[3] == ("Hours - Payment", "Plain trailing paragraph.")
    assert docs[0].source == "clinic.md > Weekdays"
    assert all(d.answer is None for d in docs)


def test_long_paragraphs_are_cut_at_sentences(tmp_path: Path) -> None:
    sentence = "The clinic offers a long list of services for every family member. "
    docs = load_documents(write(tmp_path / "long.md", "# Services\n" + sentence * 30))
    assert len(docs) > 1
    for doc in docs:
        _, body = split_context(doc.text)
        assert len(body) <= 700
        assert body.endswith(".")


def test_text_files_give_one_passage_per_paragraph(tmp_path: Path) -> None:
    docs = load_documents(write(tmp_path / "notes.txt", "First line\ncontinues.\n\n\nSecond."))
    assert [d.text for d in docs] == ["First line continues.", "Second."]
    assert split_context(docs[0].text) == ("", "First line continues.")


def test_qa_yaml_embeds_the_question_and_keeps_the_answer(tmp_path: Path) -> None:
    docs = load_documents(write(tmp_path / "faq.yaml", "- q: When do you open?\n  a: At 8.\n"))
    assert docs == [Document(text="When do you open?", source="faq.yaml#1", answer="At 8.")]


@pytest.mark.parametrize(("name", "text", "says"), [
    ("bad.yaml", "- q: [unclosed\n", "not valid YAML"),
    ("map.yaml", "q: When?\na: Now.\n", "expected a list"),
    ("keys.yaml", "- question: When?\n  answer: Now.\n", "entry 1 must have exactly the keys"),
    ("empty.yaml", "- q: When?\n  a: ''\n", "entry 1: q and a must be non-empty"),
    ("data.csv", "a,b\n", "unsupported file type"),
])
def test_malformed_files_raise_input_error_naming_the_file(
    tmp_path: Path, name: str, text: str, says: str
) -> None:
    write(tmp_path / "kb" / "good.md", "# Fine\nA good passage.\n")
    bad = write(tmp_path / "kb" / name, text)
    with pytest.raises(InputError) as info:
        load_documents(tmp_path / "kb")
    assert str(bad) in info.value.message
    assert says in info.value.message


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "latin.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.txt: not UTF-8"):
        load_documents(bad)


def test_hidden_files_are_skipped_and_order_is_stable(tmp_path: Path) -> None:
    write(tmp_path / "b.md", "B passage.\n")
    write(tmp_path / "a.txt", "A passage.\n")
    write(tmp_path / ".DS_Store", "\x00binary")
    write(tmp_path / ".git" / "config", "[core]\n")
    assert [d.text for d in load_documents(tmp_path)] == ["A passage.", "B passage."]


def test_ingesting_an_empty_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no documents found"):
        ingest_directory(object(), "t", "kb", tmp_path)  # type: ignore[arg-type]


def test_the_default_persona_knowledge_base_loads() -> None:
    config = load_config("local", env={})
    docs = load_documents(knowledge_dir(config, "maple-clinic"))
    qa = [d for d in docs if d.answer]
    assert len(qa) >= 40
    assert len(docs) - len(qa) >= 60
    assert len(set(docs)) == len(docs)
    assert all("911" in d.answer for d in qa if "emergency" in d.text.lower())
