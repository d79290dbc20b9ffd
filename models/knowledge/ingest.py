"""Turn a folder of documents into knowledge-base passages, and load them into a store.

Supported files (anything else is rejected, naming the file; hidden files are skipped):

* ``.md`` / ``.markdown``: split into passages by heading and paragraph. A bullet list (and a
  paragraph ending in ``:`` that introduces it) stays one passage. Each passage's text is its
  heading path on the first line, then the paragraph (see :func:`split_context`).
* ``.txt``: one passage per paragraph (blank-line separated).
* ``.yaml`` / ``.yml``: a list of ``{q: question, a: answer}`` pairs. The question is embedded
  (a spoken question matches it) and the curated answer is stored beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from models.errors import InputError
from models.knowledge.base import Document, KnowledgeStore

if TYPE_CHECKING:
    from configs.schema import AppConfig

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as documents are consumed by the store."""

MARKDOWN_SUFFIXES = (".md", ".markdown")
TEXT_SUFFIXES = (".txt",)
QA_SUFFIXES = (".yaml", ".yml")
SUFFIXES = MARKDOWN_SUFFIXES + TEXT_SUFFIXES + QA_SUFFIXES
MAX_PASSAGE_CHARS = 700
"""Longer paragraphs are cut at sentence boundaries (the embedder reads 256 tokens)."""

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")


def split_context(text: str) -> tuple[str, str]:
    """``(heading context, body)`` of a passage built by :func:`load_documents`.

    Markdown passages carry their heading path on the first line; other texts have no context.
    """
    head, sep, body = text.partition("\n")
    if sep and body.strip() and not head.rstrip().endswith((".", "!", "?", ":")):
        return head.strip(), body.strip()
    return "", text.strip()


def _clean_inline(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def _chunk(text: str, limit: int = MAX_PASSAGE_CHARS) -> list[str]:
    """Cut a long paragraph at sentence boundaries into pieces of at most ``limit`` chars."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def _join_items(items: list[str]) -> str:
    """A bullet list as speakable text: short items become "a, b and c."; sentences stay."""
    if any(item[-1] in ".!?" for item in items):
        return " ".join(item if item[-1] in ".!?:" else item + "." for item in items)
    if len(items) == 1:
        return items[0] + "."
    return ", ".join(items[:-1]) + " and " + items[-1] + "."


def _markdown_blocks(lines: list[str]) -> Iterator[tuple[list[str], str]]:
    """Yield (heading path, paragraph text) for each paragraph or list of a markdown file."""
    headings: list[tuple[int, str]] = []
    block: list[str] = []
    pending_intro = ""

    def flush() -> Iterator[tuple[list[str], str]]:
        nonlocal block, pending_intro
        if not block:
            return
        parts: list[str] = []
        bullets: list[str] = []
        for line in [*block, ""]:
            bullet = _BULLET.match(line)
            if bullet is None and bullets:
                parts.append(_join_items(bullets))
                bullets = []
            text = _clean_inline(line[bullet.end():] if bullet else line)
            if bullet and text:
                bullets.append(text)
            elif text:
                parts.append(text)
        ends_with_list = _BULLET.match(block[-1]) is not None
        block = []
        if not parts:
            return
        paragraph = " ".join(parts)
        if pending_intro:
            paragraph = f"{pending_intro} {paragraph}"
            pending_intro = ""
        if paragraph.endswith(":") and not ends_with_list:
            pending_intro = paragraph
            return
        yield [h for _, h in headings], paragraph

    for line in lines:
        heading = _HEADING.match(line)
        if heading:
            yield from flush()
            if pending_intro:
                yield [h for _, h in headings], pending_intro
                pending_intro = ""
            level = len(heading.group(1))
            headings = [(lvl, h) for lvl, h in headings if lvl < level]
            headings.append((level, _clean_inline(heading.group(2))))
        elif not line.strip():
            is_list = bool(block) and _BULLET.match(block[-1]) is not None
            if not is_list:
                yield from flush()
        else:
            if block and _BULLET.match(block[-1]) and not _BULLET.match(line) \
                    and not line.startswith((" ", "\t")):
                yield from flush()
            block.append(line)
    yield from flush()
    if pending_intro:
        yield [h for _, h in headings], pending_intro


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _load_markdown(path: Path) -> list[Document]:
    docs = []
    for heads, paragraph in _markdown_blocks(_read_text(path).splitlines()):
        context = " - ".join(heads)
        source = f"{path.name} > {heads[-1]}" if heads else path.name
        for piece in _chunk(paragraph):
            text = f"{context}\n{piece}" if context else piece
            docs.append(Document(text=text, source=source))
    return docs


def _load_text(path: Path) -> list[Document]:
    paragraphs = re.split(r"\n\s*\n", _read_text(path))
    docs = []
    for paragraph in paragraphs:
        cleaned = re.sub(r"\s+", " ", paragraph).strip()
        for piece in _chunk(cleaned) if cleaned else []:
            docs.append(Document(text=piece, source=path.name))
    return docs


def _load_qa(path: Path) -> list[Document]:
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of {{q: question, a: answer}} entries, "
                         f"got a {type(data).__name__}")
    docs = []
    for i, entry in enumerate(data, start=1):
        if not isinstance(entry, dict) or set(entry) != {"q", "a"}:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise InputError(f"{path}: entry {i} must have exactly the keys q and a, got {keys}")
        q, a = entry["q"], entry["a"]
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            raise InputError(f"{path}: entry {i}: q and a must be non-empty text")
        docs.append(Document(text=_clean_inline(q), source=f"{path.name}#{i}",
                             answer=_clean_inline(a)))
    return docs


def load_documents(path: Path) -> list[Document]:
    """Passages and Q&A pairs of one file, or of every supported file under a directory
    (sorted by path, so ingesting twice gives the same passages)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        docs: list[Document] = []
        for file in files:
            docs.extend(load_documents(file))
        return docs
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return _load_markdown(path)
    if suffix in TEXT_SUFFIXES:
        return _load_text(path)
    if suffix in QA_SUFFIXES:
        return _load_qa(path)
    raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                     f"use one of {', '.join(SUFFIXES)}")


def _reporting(docs: list[Document], progress: Progress | None) -> Iterable[Document]:
    if progress is None:
        return docs

    def gen() -> Iterator[Document]:
        total = len(docs)
        for i, doc in enumerate(docs):
            yield doc
            if (i + 1) % 8 == 0 or i + 1 == total:
                progress(i + 1, total)

    return gen()


def ingest_directory(
    store: KnowledgeStore,
    tenant: str,
    kb: str,
    path: Path,
    progress: Progress | None = None,
) -> int:
    """Replace the (tenant, kb) knowledge base with the documents under ``path``.

    Returns the number of passages stored. Raises :class:`InputError` for a malformed file or
    a folder with no documents.
    """
    docs = load_documents(Path(path))
    if not docs:
        raise InputError(f"{path}: no documents found; add {', '.join(SUFFIXES)} files")
    if progress is not None:
        progress(0, len(docs))
    return store.ingest(tenant, kb, _reporting(docs, progress))


def ensure_ingested(
    store: KnowledgeStore, config: AppConfig, kb_name: str, progress: Progress | None = None
) -> int:
    """Ingest the configured knowledge base ``kb_name`` when the store has none of it (a fresh
    checkout) or a different number of passages than its folder now holds; returns the count.

    Edits that keep the passage count are picked up by ``avatarctl kb ingest``.
    """
    from configs.loader import knowledge_dir

    folder = knowledge_dir(config, kb_name)  # raises ConfigError for an unknown kb
    kb = next(k for k in config.knowledge_bases if k.name == kb_name)
    docs = load_documents(folder)
    if not docs:
        raise InputError(f"{folder}: no documents found; add {', '.join(SUFFIXES)} files")
    expected = len(set(docs))
    count = store.count(kb.tenant, kb.name)
    if count == expected:
        return count
    return store.ingest(kb.tenant, kb.name, _reporting(docs, progress))

