"""A stand-in for Search-R1's retrieval server that answers with its exact JSON shapes.

The real one is search_r1/search/retrieval_server.py in PeterGriffinJin/Search-R1 (read at
a14dc3a): FastAPI in front of e5 + faiss (dense) or pyserini (BM25), which a test cannot run.
This one scores by shared words instead, and reproduces what goes over the wire (line numbers
are that file's):

    route        POST /retrieve only (326); any other path: FastAPI's 404 {"detail": "Not Found"}
    request      {"queries": [str], "topk": int | null, "return_scores": bool = false} (318-321);
                 topk missing or 0 -> the server's --topk (337-338); an invalid body: FastAPI's 422
    dense        each document is the corpus row as the JSONL holds it, e.g. {"id", "contents"}
                 (load_docs 34-36, used at 235 and 258); always topk of them (faiss)
    bm25         a pyserini index with stored documents (contain_doc, 156-157): {"title": the first
                 line of contents stripped of quotes, "text": the other lines, "contents"}, no id
                 (174-186); only the documents that match, [] when none (163-167)
    bm25_rows    a pyserini index without stored documents: the corpus row, as dense (187-188)
    scores       return_scores true: [{"document": doc, "score": float}, ...] per query (350-355)
    no scores    return_scores false: batch_search then returns the results alone (202-205,
                 268-271), which line 341 unpacks into two names: ValueError, FastAPI's plain-text
                 500 "Internal Server Error", unless there are exactly two queries; then `results`
                 is the first query's documents and the answer is those, bare, not one list per
                 query (356-357)
    body         Starlette's JSONResponse: compact, UTF-8, not ASCII-escaped
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class SearchR1Standin:
    """Its retriever half: `rows` are corpus rows ({"id", "contents"}, as the JSONL holds them)."""

    def __init__(self, rows: list[dict], mode: str = "dense", topk: int = 3):
        assert mode in ("dense", "bm25", "bm25_rows")
        self.rows, self.mode, self.topk = rows, mode, topk

    def _one(self, query: str, k: int) -> tuple[list[dict], list[float]]:
        scored = [(float(len(_words(query) & _words(r["contents"]))), i) for i, r in enumerate(self.rows)]
        scored.sort(key=lambda t: (-t[0], t[1]))
        if self.mode != "dense":  # Lucene returns only documents that match
            scored = [t for t in scored if t[0] > 0]
        scored = scored[:k]
        if self.mode == "bm25":
            docs = []
            for _, i in scored:
                contents = self.rows[i]["contents"]
                first, *rest = contents.split("\n")
                docs.append({"title": first.strip('"'), "text": "\n".join(rest), "contents": contents})
        else:
            docs = [dict(self.rows[i]) for _, i in scored]
        return docs, [s for s, _ in scored]

    def batch_search(self, queries: list[str], k: int, return_score: bool):
        results, scores = zip(*(self._one(q, k) for q in queries), strict=True) if queries else ((), ())
        if return_score:
            return list(results), list(scores)
        return list(results)  # one value: what the endpoint then unpacks into two

    def respond(self, request: dict) -> tuple[int, str, bytes]:
        """(status, content type, body) for one POST /retrieve body."""
        queries, topk, return_scores = request.get("queries"), request.get("topk"), request.get("return_scores", False)
        if not (isinstance(queries, list) and all(isinstance(q, str) for q in queries)) or not isinstance(return_scores, bool):
            return 422, "application/json", _json({"detail": [{"type": "invalid", "loc": ["body"], "msg": "invalid request"}]})
        k = topk or self.topk
        try:
            results, scores = self.batch_search(queries, k, return_scores)
        except ValueError:  # the real endpoint's unpacking of a single return value
            return 500, "text/plain; charset=utf-8", b"Internal Server Error"
        resp = []
        for i, single in enumerate(results):
            resp.append([{"document": d, "score": s} for d, s in zip(single, scores[i], strict=True)] if return_scores else single)
        return 200, "application/json", _json({"result": resp})


def _json(payload) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def serve_standin(rows: list[dict], mode: str = "dense", topk: int = 3):
    """The stand-in on 127.0.0.1 in a daemon thread: (server, "http://127.0.0.1:PORT")."""
    standin = SearchR1Standin(rows, mode, topk)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/retrieve":
                status, kind, out = 404, "application/json", _json({"detail": "Not Found"})
            else:
                try:
                    request = json.loads(body)
                except ValueError:
                    request = None
                if isinstance(request, dict):
                    status, kind, out = standin.respond(request)
                else:
                    status, kind, out = 422, "application/json", _json({"detail": [{"msg": "JSON decode error"}]})
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
