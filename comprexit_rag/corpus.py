"""Reading a passage corpus from disk for indexing, whatever its layout.

:func:`read_corpus` accepts

* a ``.jsonl`` / ``.json`` file (optionally gzipped) of ``{"id"?, "title"?, "text"}`` records;
* the shared HotpotQA files, JSON-lines or official JSON: every unique paragraph of every
  question becomes one passage;
* the 2WikiMultihopQA ``corpus.json.gz`` (a JSON list of ``{"title", "text"}``);
* a ``.txt`` / ``.md`` file, cut into passages of whole paragraphs of at most ``max_words``
  words (the dense retriever reads about 200 words at most). Files that are not valid UTF-8 or
  look binary (a NUL byte anywhere) are skipped with a warning; other control characters are kept;
* a folder, searched recursively for all of the above. The ids of its JSON records are prefixed
  with the file's path in the folder (``"docs/a.jsonl:7"``), so files that number their records
  alike do not collide.

A record whose text is longer than ``max_words`` words is cut into passages as a text file is,
with ids ``"<id>#0"``, ``"<id>#1"``...: a passage much longer than the reader's window could not
be read whole, and only its beginning would be searchable.

Passages whose formatted text (``"title\\ntext"``) repeats an earlier one are dropped, so a
corpus can be re-read and re-indexed without duplicates. Ids are keys: two records with one id
and different texts are an :class:`~comprexit_rag.errors.InvalidInputError` naming both.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from .data import Passage, load_2wiki_corpus, load_hotpotqa
from .data._io import open_text
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = ["TEXT_SUFFIXES", "read_corpus", "split_paragraphs"]

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
DEFAULT_MAX_WORDS = 200


def read_corpus(
    path: str | os.PathLike[str], limit: int | None = None, *, max_words: int = DEFAULT_MAX_WORDS
) -> list[Passage]:
    """Read the passages of a corpus file or folder (see the module docstring for layouts).

    Args:
        path: a JSON / JSON-lines file, a HotpotQA or 2Wiki file, a text file or a folder.
        limit: keep at most this many (unique) passages, in file order.
        max_words: longest passage cut from a text file or a generic JSON record, in words (a
            longer paragraph is cut at word boundaries; the pieces of a record with id ``X`` get
            the ids ``X#0``, ``X#1``...). HotpotQA and 2Wiki paragraphs are kept whole.

    Raises:
        InvalidInputError: the path does not exist, has an unknown suffix, is malformed JSON,
            a truncated or corrupt gzip file, or holds no passage at all.
    """
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be a positive number of passages, got {limit}.")
    if max_words < 1:
        raise InvalidInputError(f"max_words must be positive, got {max_words}.")
    source = Path(path).expanduser()
    try:
        unique = list(islice(_unique(_read_source(source, max_words)), limit))
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # raised while a .gz file is read
        raise InvalidInputError(
            f"{source} is a truncated or corrupt gzip file ({error}); download or compress it again."
        ) from error
    if not unique:
        raise InvalidInputError(f"{source} holds no passage with text; nothing to index.")
    logger.info("Read %d passages from %s", len(unique), source)
    return unique


def _read_source(source: Path, max_words: int) -> Iterable[Passage]:
    if source.is_dir():
        return _read_folder(source, max_words)
    if not source.is_file():
        raise InvalidInputError(f"Corpus {source} does not exist.")
    name = source.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return _read_text_file(source, source.stem, max_words)
    if name.endswith(JSON_SUFFIXES):
        return _read_json_file(source, max_words)
    raise InvalidInputError(
        f"{source}: unknown corpus format; expected a folder, .txt/.md, or .jsonl/.json (optionally .gz)."
    )


def _unique(passages: Iterable[Passage]) -> Iterator[Passage]:
    """Drop passages whose formatted text was already seen (HotpotQA repeats paragraphs).

    Raises:
        InvalidInputError: two passages share an id but not their text (ids are keys: indexing
            both would keep only the first).
    """
    seen: set[str] = set()
    by_id: dict[str, tuple[int, str]] = {}
    dropped = 0
    for position, passage in enumerate(passages):
        text = passage.formatted()
        if text in seen:
            dropped += 1
            continue
        if passage.id:
            first = by_id.setdefault(passage.id, (position, text))
            if first[1] != text:
                raise InvalidInputError(
                    f"Passages {first[0]} and {position} of the corpus share the id {passage.id!r} with different "
                    f"texts ({_excerpt(first[1])} and {_excerpt(text)}). Ids are keys: give every record its own "
                    "id (e.g. '<document>#<chunk>'), or drop the 'id' fields to key passages by content."
                )
        seen.add(text)
        yield passage
    if dropped:
        logger.info("Dropped %d duplicate passages", dropped)


# ---------------------------------------------------------------------------------------------
# Text files and folders.
# ---------------------------------------------------------------------------------------------


def _read_folder(folder: Path, max_words: int) -> Iterator[Passage]:
    suffixes = TEXT_SUFFIXES + JSON_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
    if not files:
        logger.warning("%s has no .txt, .md, .jsonl or .json files", folder)
    for file in files:
        relative = file.relative_to(folder).as_posix()
        if file.name.lower().endswith(JSON_SUFFIXES):
            yield from _read_json_file(file, max_words, id_prefix=relative)
        else:
            yield from _read_text_file(file, file.relative_to(folder).with_suffix("").as_posix(), max_words, relative)


def _read_text_file(file: Path, title: str, max_words: int, id_prefix: str | None = None) -> Iterator[Passage]:
    text = _decode_text_file(file)
    if text is None:
        return
    prefix = id_prefix or file.name
    for index, chunk in enumerate(split_paragraphs(text, max_words)):
        yield Passage(text=chunk, title=title, id=f"{prefix}#{index}")


def _decode_text_file(file: Path) -> str | None:
    """The file's text, or ``None`` (with a warning) when it is binary, not UTF-8 or empty."""
    try:
        data = file.read_bytes()
    except OSError as error:
        logger.warning("Skipping %s: cannot read it (%s)", file, error)
        return None
    if b"\x00" in data:  # never in UTF-8 text; binary files usually have one early, but not always
        logger.warning("Skipping %s: it looks binary (NUL bytes)", file)
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        logger.warning("Skipping %s: not valid UTF-8 (byte %d: %s)", file, error.start, error.reason)
        return None
    if not text.strip():
        logger.warning("Skipping %s: empty", file)
        return None
    return text


def split_paragraphs(text: str, max_words: int = DEFAULT_MAX_WORDS) -> list[str]:
    """Pack blank-line-separated paragraphs into chunks of at most ``max_words`` words.

    Whitespace inside a chunk is collapsed, paragraphs are joined by a blank line, and a
    paragraph longer than ``max_words`` is cut at word boundaries. No word is dropped.
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for raw in text.replace("\r\n", "\n").split("\n\n"):
        words = raw.split()
        while words:
            if size and size + len(words) > max_words:
                chunks.append("\n\n".join(current))
                current, size = [], 0
            take = words[:max_words]
            words = words[max_words:]
            current.append(" ".join(take))
            size += len(take)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


# ---------------------------------------------------------------------------------------------
# JSON and JSON-lines files.
# ---------------------------------------------------------------------------------------------


def _read_json_file(file: Path, max_words: int, id_prefix: str | None = None) -> Iterator[Passage]:
    first = _first_record(file)
    if first is None:
        return iter(())
    if ("contexts" in first and "question_text" in first) or ("context" in first and "supporting_facts" in first):
        logger.info("%s is a HotpotQA file; indexing the paragraphs of every question", file)
        return (passage for example in _load(load_hotpotqa, file) for passage in example.passages)
    if set(first) == {"title", "text"} and not _is_jsonl(file):
        return iter(_load(load_2wiki_corpus, file))
    return _records(file, max_words, id_prefix)


def _load(loader: Any, file: Path) -> Any:
    try:
        return loader(file)
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(f"{file} is not a well-formed corpus file: {error!r}") from error


def _is_jsonl(file: Path) -> bool:
    with open_text(file) as handle:
        head = handle.read(256).lstrip()
    return not head.startswith("[")


def _first_record(file: Path) -> Mapping[str, Any] | None:
    for _, record in _iter_json_records(file):
        return record
    return None


def _iter_json_records(file: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(location, record)`` for a JSON list or a JSON-lines file."""
    try:
        if _is_jsonl(file):
            with open_text(file) as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError as error:
                        raise InvalidInputError(f"{file}:{number} is not valid JSON ({error}).") from error
                    yield f"{file}:{number}", _check_record(record, f"{file}:{number}")
        else:
            with open_text(file) as handle:
                try:
                    rows = json.load(handle)
                except ValueError as error:
                    raise InvalidInputError(f"{file} is not valid JSON ({error}).") from error
            if not isinstance(rows, list):
                raise InvalidInputError(f"{file} must hold a JSON list of passage records, got {type(rows).__name__}.")
            for index, record in enumerate(rows):
                yield f"{file}[{index}]", _check_record(record, f"{file}[{index}]")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{file} is not UTF-8 text ({error.reason}).") from error


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_record(record: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"{where}: expected a JSON object with a 'text' field, got {type(record).__name__}.")
    return record


def _records(file: Path, max_words: int, id_prefix: str | None) -> Iterator[Passage]:
    """Generic ``{"id"?, "title"?, "text"}`` records; records without usable text are skipped.

    A record longer than ``max_words`` words becomes several passages (``"<id>#<n>"``); ids get
    ``"<id_prefix>:"`` in front when given.
    """
    skipped = 0
    for where, record in _iter_json_records(file):
        text, title, passage_id = record.get("text"), record.get("title") or "", record.get("id")
        if not isinstance(text, str) or not text.strip() or not isinstance(title, str):
            skipped += 1
            logger.debug("%s: skipped (no string 'text' or a non-string 'title')", where)
            continue
        if not _is_unicode(text) or not _is_unicode(title):
            skipped += 1
            logger.warning("%s: skipped (lone surrogate escapes such as \\ud800 are not text)", where)
            continue
        base = "" if passage_id is None else str(passage_id)
        if base and id_prefix:
            base = f"{id_prefix}:{base}"
        if len(text.split()) <= max_words:
            yield Passage(text=text.strip(), title=title.strip(), id=base)
            continue
        chunks = split_paragraphs(text, max_words)
        logger.info("%s: a record of %d words is cut into %d passages", where, len(text.split()), len(chunks))
        for index, chunk in enumerate(chunks):
            yield Passage(text=chunk, title=title.strip(), id=f"{base}#{index}" if base else "")
    if skipped:
        logger.warning("%s: skipped %d records without a non-empty string 'text'", file, skipped)


def _excerpt(text: str, length: int = 60) -> str:
    """A short, single-line quote of a passage for error messages."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= length else flat[: length - 1] + "…")
