"""rlvr.retrieval: BM25 over a JSONL corpus, and the Search-R1 HTTP contract against servers on
127.0.0.1 (ours in front of BM25, a stand-in of Search-R1's own, one that is down, one that is
slow, one out of contract)."""

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from search_r1_server import SearchR1Standin, serve_standin

from rlvr.retrieval import (
    BM25Retriever,
    HTTPRetriever,
    Passage,
    RetrieverError,
    format_information,
    passage_id,
    serve,
)

FACTS = {
    "d1": '"Alder Vale"\nAlder Vale is the home town of the painter Mira Holt.',
    "d2": '"Mira Holt"\nMira Holt was born in 1901 and painted rivers.',
    "d3": '"Corven Bay"\nCorven Bay is a fishing port on the north coast.',
    "d4": '"Tomas Reed"\nTomas Reed founded the Corven Bay lighthouse.',
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "contents": c}) + "\n" for i, c in FACTS.items()))
    return path


@pytest.fixture(scope="module")
def bm25(corpus, tmp_path_factory):
    return BM25Retriever.open(corpus, tmp_path_factory.mktemp("index"))


def test_bm25_ranks_the_passage_that_holds_the_words(bm25):
    [hits] = bm25.search(["who founded the lighthouse"], k=3)
    assert hits[0] == Passage("d4", "Tomas Reed", "Tomas Reed founded the Corven Bay lighthouse.", hits[0].score)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[0].score > 0
    both = bm25.search(["painter Mira Holt", "fishing port"], k=1)
    assert [[h.id for h in row] for row in both] == [["d1"], ["d3"]]


def test_bm25_query_that_matches_nothing_and_k_past_the_corpus(bm25):
    assert bm25.search(["zyxxy qwrtp", "the of and", ""], k=3) == [[], [], []]
    assert len(bm25.search(["Corven Bay lighthouse port"], k=50)[0]) == 2  # only the docs that match
    assert bm25.search([], k=3) == []
    assert bm25.search(["Mira " * 20_000], k=2)[0][0].id in ("d1", "d2")  # a 100 KB query


def test_index_is_built_once_per_corpus(corpus, tmp_path):
    first = BM25Retriever.open(corpus, tmp_path)
    (built,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    stamp = (built / "bm25" / "params.index.json").stat().st_mtime_ns
    again = BM25Retriever.open(corpus, tmp_path)
    assert (built / "bm25" / "params.index.json").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert again.search(["Alder Vale"], k=2) == first.search(["Alder Vale"], k=2)


def test_a_malformed_corpus_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "contents": "x"}) + "\n" + json.dumps({"id": 2}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a corpus line must be a JSON object"):
        BM25Retriever.open(bad, tmp_path / "i")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BM25Retriever.open(tmp_path / "missing.jsonl", tmp_path / "i")


def test_information_block_as_search_r1_writes_it():
    hits = [Passage("d1", "A", "one", 1.0), Passage("d2", "B", "two", 0.5)]
    assert format_information(hits, 1000) == "Doc 1(Title: \"A\") one\nDoc 2(Title: \"B\") two"
    assert format_information(hits, 12) == "Doc 1(Tit..." and len(format_information(hits, 12)) == 12
    assert format_information([], 100) == "No results."


def test_http_client_against_our_server_returns_what_bm25_returns(bm25):
    server = serve(bm25)
    try:
        host, port = server.server_address
        client = HTTPRetriever(f"http://{host}:{port}", timeout_s=5)
        queries = ["who founded the lighthouse", "zyxxy", "Mira " * 20_000]
        assert client.search(queries, k=2) == bm25.search(queries, k=2)
    finally:
        server.shutdown()


ROWS = [{"id": i, "contents": c} for i, c in FACTS.items()]
SEARCH_R1_QUERIES = ["who founded the Corven Bay lighthouse", "zyxxy", "painter Mira Holt"]


def parsed(doc_id, contents, score):
    title, _, text = contents.partition("\n")
    return Passage(doc_id, title.strip('"'), text, score)


@pytest.mark.parametrize("mode", ["dense", "bm25", "bm25_rows"])
@pytest.mark.parametrize("form", ["{}", "{}/", "{}/retrieve", "{}/retrieve/"])
def test_search_r1s_own_server_in_each_mode_and_url_form(mode, form):
    """Search-R1's server (tests/search_r1_server.py reproduces its answers): dense and BM25-rows
    documents are corpus rows, BM25 ones {"title", "text", "contents"} without an id, which gets
    one derived from the contents; Search-R1's configs write the url with its /retrieve."""
    server, url = serve_standin(ROWS, mode)
    try:
        got = HTTPRetriever(form.format(url), timeout_s=5).search(SEARCH_R1_QUERIES, k=2)
    finally:
        server.shutdown()
    docs, scores = SearchR1Standin(ROWS, mode).batch_search(SEARCH_R1_QUERIES, 2, True)
    want = [[parsed(d.get("id") or passage_id(d["contents"]), d["contents"], s) for d, s in zip(row, row_scores, strict=True)]
            for row, row_scores in zip(docs, scores, strict=True)]
    assert got == want and got[0][0] == parsed("d4" if mode != "bm25" else passage_id(FACTS["d4"]), FACTS["d4"], 5.0)
    assert (got[1] == []) == (mode != "dense")  # Lucene finds nothing; faiss always answers k


def test_a_passage_without_an_id_gets_a_stable_one_from_its_contents():
    assert passage_id(FACTS["d1"]) == passage_id(str(FACTS["d1"])) != passage_id(FACTS["d2"])
    assert passage_id("x") == "sha256:2d711642b726b044"  # a change here renames every BM25 passage


def test_search_r1s_server_without_scores():
    """Asked for no scores, Search-R1's server answers HTTP 500 (it unpacks one return value into
    two), or with exactly two queries the first one's documents alone: the client always asks
    for scores. A server that answers bare documents per query (the shape that line means) is
    read, score 0."""
    standin = SearchR1Standin(ROWS, "bm25")
    for queries in (["painter"], ["painter", "lighthouse", "port"]):
        assert standin.respond({"queries": queries, "topk": 2})[:2] == (500, "text/plain; charset=utf-8")
    status, _, body = standin.respond({"queries": ["painter", "lighthouse"], "topk": 2})
    assert status == 200 and all("contents" in doc for doc in json.loads(body)["result"])
    bare = json.dumps({"result": [[{"id": "d1", "contents": FACTS["d1"]}], []]}).encode()
    server, url = stub_server(reply=bare)
    try:
        assert HTTPRetriever(url, timeout_s=5).search(["a", "b"], k=1) == [[parsed("d1", FACTS["d1"], 0.0)], []]
    finally:
        server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_is_a_clear_error():
    client = HTTPRetriever(f"http://127.0.0.1:{free_port()}", timeout_s=5)
    with pytest.raises(RetrieverError, match=r"cannot reach retriever http://127.0.0.1:\d+/retrieve"):
        client.search(["q"], k=3)


class Stub(BaseHTTPRequestHandler):
    reply: bytes = b"{}"
    delay: float = 0.0
    status: int = 200

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.reply)))
        self.end_headers()
        self.wfile.write(self.reply)

    def log_message(self, *args):
        pass


def stub_server(**attrs):
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("S", (Stub,), attrs))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(("attrs", "says"), [
    ({"delay": 3.0, "reply": b'{"result": [[]]}'}, r"did not answer within 0.5 s"),
    ({"reply": b'{"result": []}'}, r"broke the contract: expected .* one list per query \(1\)"),
    ({"reply": b'{"result": [[{"doc": 1}]]}'}, r"broke the contract: each hit needs"),
    ({"reply": b"<html>"}, r"not JSON"),
    ({"status": 500, "reply": b""}, r"answered HTTP 500"),
])
def test_a_slow_or_broken_server_is_a_clear_error(attrs, says):
    server, url = stub_server(**attrs)
    try:
        start = time.monotonic()
        with pytest.raises(RetrieverError, match=says):
            HTTPRetriever(url, timeout_s=0.5).search(["q"], k=3)
        assert time.monotonic() - start < 2.5  # never waits out the slow server
    finally:
        server.shutdown()


def test_a_url_without_a_scheme_is_refused():
    with pytest.raises(ValueError, match="must start with http"):
        HTTPRetriever("localhost:8000")


def dropping_server(how: str):
    """A server that reads one request and then, instead of answering: closes the connection
    ("close"), resets it ("reset"), or sends headers and half the body it announced ("short")."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            if how == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "short":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"result\"")
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize(("how", "says"), [
    ("close", r"dropped the connection: RemoteDisconnected"),
    ("reset", r"dropped the connection: (ConnectionResetError|RemoteDisconnected)"),
    ("short", r"dropped the connection: IncompleteRead"),
])
def test_a_server_that_drops_the_connection_is_a_clear_error(how, says):
    with pytest.raises(RetrieverError, match=says) as caught:
        HTTPRetriever(dropping_server(how), timeout_s=5).search(["q"], k=3)
    assert "\n" not in str(caught.value)


class Failing:
    def __init__(self, err: Exception):
        self.err = err

    def search(self, queries, k):
        raise self.err


@pytest.mark.parametrize(("err", "says"), [
    (RetrieverError("retriever bm25 lost its index at /x/bm25"), r"answered HTTP 502 retriever bm25 lost its index at /x/bm25$"),
    (MemoryError("out of\nmemory"), r"answered HTTP 500 retriever failed: MemoryError: out of memory$"),
])
def test_serve_answers_its_backends_failure_and_the_client_raises_it_in_one_line(err, says):
    server = serve(Failing(err))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for _ in range(2):  # answered, not dropped: the server goes on serving
            with pytest.raises(RetrieverError, match=says) as caught:
                HTTPRetriever(url, timeout_s=5).search(["q"], k=3)
            assert "\n" not in str(caught.value)
    finally:
        server.shutdown()
