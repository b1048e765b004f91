"""Retrievers for search episodes (the seed paper's multi-hop QA: the model writes
`<search> query </search>` and reads back `<information>` holding the top-k passages).

Both take a batch of queries and return, per query, up to k passages best first:

    BM25Retriever   in process, bm25s over a corpus in the FlashRAG / Search-R1 JSONL form
                    ({"id": ..., "contents": "\"Title\"\\ntext"} per line); the index is built once
                    per corpus (keyed by its sha256) and cached on disk
    HTTPRetriever   a client of Search-R1's retrieval server (e5 over wiki-18 on a cluster):
                    POST <url>/retrieve {"queries": [...], "topk": k, "return_scores": true}
                    → {"result": [[{"document": {..., "contents"}, "score"}, ...], ...]}
                    (the url may name the endpoint itself, as Search-R1's configs do: .../retrieve)

A retriever that cannot answer raises RetrieverError with one line naming the retriever and what
went wrong (a server that is down, slow past its timeout, drops the connection, answers out of
contract, or answers an HTTP error: then with the reason it gives): the episode records it and
the run fails with that reason, it never hangs. A query that matches nothing gets
an empty list, which the episode reports as such.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class RetrieverError(RuntimeError):
    """The retriever could not answer (one line: which retriever, what happened)."""


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float

    @classmethod
    def from_contents(cls, doc_id, contents: str, score: float) -> Passage:
        """FlashRAG / Search-R1 `contents`: the title (quoted) on the first line, the text after."""
        title, _, text = str(contents).partition("\n")
        return cls(str(doc_id), title.strip().strip('"'), text.strip(), float(score))


class Retriever(Protocol):
    def search(self, queries: list[str], k: int) -> list[list[Passage]]: ...


def check_retriever(episode) -> None:
    """An EpisodeConfig's retriever, before any model loads: a corpus that is not there (a
    server's reachability shows at its first search, with a timeout)."""
    corpus = episode.retriever.corpus
    if episode.mode == "search" and corpus and not Path(corpus).is_file():
        raise FileNotFoundError(
            f"rollout.episode.retriever.corpus: no such file {corpus!r} (a search suite's data rule "
            "writes <data dir>/corpus.jsonl: `rlvr data --suite NAME --out DIR`)"
        )


def make_retriever(cfg) -> Retriever:
    """The retriever of a RetrieverConfig (rlvr/config.py): BM25 over `corpus` (index cached in
    index_dir, default <corpus dir>/bm25) or the Search-R1 server at `url`."""
    if cfg.url:
        return HTTPRetriever(cfg.url, cfg.timeout_s)
    return BM25Retriever.open(cfg.corpus, cfg.index_dir or Path(cfg.corpus).parent / "bm25")


def format_information(passages: list[Passage], max_chars: int) -> str:
    """The body of one <information> block, as Search-R1 writes it (`Doc 1(Title: "T") text`: wiki-18
    quotes the title on its contents' first line, which Search-R1 prints as is), cut to max_chars;
    "No results." when the retriever found nothing."""
    if not passages:
        return "No results."
    text = "\n".join(f"Doc {i}(Title: \"{p.title}\") {p.text}" for i, p in enumerate(passages, 1))
    return text if len(text) <= max_chars else text[: max(max_chars - 3, 0)] + "..."


# ---------------------------------------------------------------- BM25 in process


def read_corpus(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, contents) per line of a FlashRAG / Search-R1 JSONL corpus; a malformed line is an
    error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"retrieval corpus {str(path)!r} does not exist")
    docs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                docs.append((str(row["id"]), str(row["contents"])))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: a corpus line must be a JSON object with \"id\" and "
                                 f"\"contents\" ({type(err).__name__}: {err})") from None
    if not docs:
        raise ValueError(f"retrieval corpus {path} holds no documents")
    return docs


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BM25Retriever:
    """BM25 (bm25s: Lucene's scoring, English stopwords, no stemming) over a JSONL corpus."""

    INDEX = "bm25"

    def __init__(self, docs: list[tuple[str, str]], index):
        self.docs, self.index = docs, index

    @classmethod
    def open(cls, corpus: str | os.PathLike, cache_dir: str | os.PathLike) -> BM25Retriever:
        """The index of `corpus` from cache_dir/<sha256[:16]>/, built and saved there (atomically)
        the first time."""
        import bm25s

        docs = read_corpus(corpus)
        where = Path(cache_dir) / file_sha256(corpus)[:16]
        if (where / cls.INDEX).is_dir():
            return cls(docs, bm25s.BM25.load(str(where / cls.INDEX)))
        index = bm25s.BM25()
        index.index(bm25s.tokenize([c for _, c in docs], stopwords="en", show_progress=False), show_progress=False)
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}."))
        try:
            index.save(str(tmp / cls.INDEX))
            (tmp / "corpus.json").write_text(json.dumps({"corpus": str(corpus), "documents": len(docs)}))
            os.replace(tmp, where)  # a concurrent builder may have won: its index is the same
        except OSError:
            if not (where / cls.INDEX).is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(docs, index)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        import bm25s

        if not queries:
            return []
        tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
        ids, scores = self.index.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False)
        return [
            [Passage.from_contents(*self.docs[int(i)], s) for i, s in zip(row_ids, row_scores, strict=True) if s > 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]


# ---------------------------------------------------------------- Search-R1's server


class HTTPRetriever:
    """Client of a Search-R1 retrieval server (`search_r1/search/retrieval_server.py`).

    Its documents come in two shapes: dense retrieval answers the corpus row ({"id", "contents"}),
    BM25 over a pyserini index with stored documents {"title", "text", "contents"} without an id.
    `contents` is in both (and is all that Search-R1's own client reads), so a passage is made of
    it, and a document without an id gets `passage_id(contents)`. Scores are always asked for: that
    server answers HTTP 500 to return_scores=false (it unpacks one return value into two); a bare
    document in place of {"document", "score"} is still accepted, with score 0.
    """

    def __init__(self, url: str, timeout_s: float = 30.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retriever url must start with http:// or https://, got {url!r}")
        base = url.rstrip("/")
        self.url = base if base.endswith("/retrieve") else base + "/retrieve"
        self.timeout_s = timeout_s

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        body = json.dumps({"queries": list(queries), "topk": k, "return_scores": True}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RetrieverError(f"retriever {self.url} answered HTTP {err.code} {_error_detail(err)}") from None
        except TimeoutError:
            raise RetrieverError(f"retriever {self.url} did not answer within {self.timeout_s:g} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (socket.timeout, TimeoutError)):
                raise RetrieverError(f"retriever {self.url} did not answer within {self.timeout_s:g} s") from None
            raise RetrieverError(f"cannot reach retriever {self.url}: {err.reason}") from None
        except (http.client.HTTPException, OSError) as err:
            # reached, then the connection broke: closed unanswered, reset, a body cut short
            raise RetrieverError(f"retriever {self.url} dropped the connection: {type(err).__name__}: {err}") from None
        except ValueError:
            raise RetrieverError(f"retriever {self.url} answered with something that is not JSON") from None
        return self._passages(payload, len(queries))

    def _passages(self, payload, n: int) -> list[list[Passage]]:
        result = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(result, list) or len(result) != n or not all(isinstance(hits, list) for hits in result):
            raise RetrieverError(f"retriever {self.url} broke the contract: expected {{\"result\": [...]}} with "
                                 f"one list per query ({n}), got {str(payload)[:200]}")
        try:
            return [[_hit_passage(hit) for hit in hits] for hits in result]
        except (KeyError, TypeError, ValueError) as err:
            raise RetrieverError(f"retriever {self.url} broke the contract: each hit needs "
                                 f"{{\"document\": {{\"contents\", ...}}, \"score\"}} ({err!r})") from None


def passage_id(contents: str) -> str:
    """The id of a passage its server gave none (Search-R1's BM25 documents): derived from its
    contents, so the same passage has the same id in every episode and run."""
    return "sha256:" + hashlib.sha256(contents.encode("utf-8")).hexdigest()[:16]


def _hit_passage(hit) -> Passage:
    document, score = (hit["document"], hit.get("score", 0.0)) if "document" in hit else (hit, 0.0)
    contents = str(document["contents"])
    doc_id = document.get("id")
    return Passage.from_contents(passage_id(contents) if doc_id is None else doc_id, contents, score)


def _one_line(text, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _error_detail(err: urllib.error.HTTPError) -> str:
    """Why a server refused: the {"detail": ...} body FastAPI (Search-R1's server) and serve()
    answer with, else the status line's reason."""
    try:
        return _one_line(json.loads(err.read(1 << 16))["detail"])
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        return _one_line(err.reason)


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 0):
    """A server of Search-R1's contract in front of any retriever (e.g. BM25 for a cluster job's
    rollout workers), in a daemon thread; returns it (`.server_address`, `.shutdown()`)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                queries, k = [str(q) for q in request["queries"]], int(request.get("topk", 3))
            except (ValueError, KeyError, TypeError) as err:
                self.answer(400, {"detail": f"bad request: {err}"})
                return
            try:
                hits = retriever.search(queries, k)
            except RetrieverError as err:  # the backend's own one-line reason, for the client to raise
                self.answer(502, {"detail": str(err)})
                return
            except Exception as err:  # answered too: a dropped connection would hide why
                self.answer(500, {"detail": f"retriever failed: {type(err).__name__}: {err}"})
                return
            result = [[{"document": {"id": p.id, "contents": f'"{p.title}"\n{p.text}'}, "score": p.score}
                       for p in row] for row in hits]
            self.answer(200, {"result": result})

        def answer(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            reason = _one_line(payload["detail"], 200).encode("latin-1", "replace").decode("latin-1") if code != 200 else None
            self.send_response(code, reason)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet: a rollout sends thousands
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
