"""The review page's local server: ``fer-batch review OUT.csv``.

Private by construction, as Jupyter's server is:

- it listens on 127.0.0.1 only;
- a random token per run (``secrets.token_urlsafe``) must come with every request - in the printed URL's
  ``?token=``, then in a cookie the first page sets (HttpOnly, SameSite=Strict), or an ``X-Review-Token`` header;
- the Host header must be ``127.0.0.1:PORT`` or ``localhost:PORT`` (a page on another name that resolves here -
  DNS rebinding - is refused), and a POST must come from the page's own Origin with a JSON body;
- requests name items by number only: the server reads the sources the CSV names and nothing else, and no part of
  a request ever becomes a file path; the page's own files are read once from the package's data;
- every answer carries a Content-Security-Policy that allows nothing from elsewhere, and the page puts every value
  on screen as text (``textContent``), never as markup.

The standard library's ThreadingHTTPServer is enough: one person, a handful of requests a second, and nothing to
install. Decisions go through one lock to the review file (:mod:`fer_batch.review.decisions`), which is on disk
before the answer leaves, so two tabs on one review never interleave a record.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fer_batch.labels import EMOTIONS
from fer_batch.review.crops import FaceCropper
from fer_batch.review.decisions import ACTIONS, DECISIONS, ReviewLog
from fer_batch.review.items import ReviewError, ReviewItems, review_path
from fer_batch.sources import InputError

HOST = "127.0.0.1"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/review.js": ("review.js", "text/javascript"),
          "/review.css": ("review.css", "text/css")}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 4096  # bytes of a POST: a decision is a few dozen


def _colors() -> list[str]:
    from fer_batch.draw import hex_color

    return [hex_color(emotion) for emotion in EMOTIONS]


class Review:
    """One review: the CSV's items, the review file, the crops, and the state the page sees."""

    def __init__(self, csv_path: str | Path, review_file: str | Path | None = None):
        self.csv_path = Path(csv_path)
        self.items = ReviewItems(self.csv_path)
        self.log = ReviewLog(review_file or review_path(self.csv_path))
        self.cropper = FaceCropper(self.items)
        self.lock = threading.Lock()
        self.token = secrets.token_urlsafe(32)
        self.run_id = secrets.token_hex(6)  # in crop URLs: a browser's cache never mixes two runs' crops
        self.decisions: dict[int, str] = {}
        self.elsewhere = 0  # decisions in the review file on items this CSV does not have (it was relabelled)
        for key, decision in self.log.state.items():
            item = self.items.find(key)
            if item is None:
                self.elsewhere += 1
            else:
                self.decisions[item] = decision
        listing = {"csv": self.csv_path.name, "review_file": self.log.path.name, "emotions": list(EMOTIONS),
                   "colors": _colors(), "run": self.run_id, **self.items.to_json()}
        self.listing = json.dumps(listing, separators=(",", ":")).encode("utf-8")
        self.pages = {route: resources.files("fer_batch.review").joinpath("static", name).read_bytes()
                      for route, (name, _) in STATIC.items()}

    def counts(self) -> dict[str, int]:
        changed = sum(decision != self.items.model_emotion(item) for item, decision in self.decisions.items())
        return {"items": len(self.items), "reviewed": len(self.decisions), "changed": changed,
                "left": len(self.items) - len(self.decisions), "elsewhere": self.elsewhere}

    def state(self) -> dict:
        return {"decisions": {str(item): decision for item, decision in self.decisions.items()},
                "counts": self.counts(), "seq": self.log.records}

    def decide(self, item: int, decision: str, action: str) -> dict:
        with self.lock:
            key = self.items.key(item)
            self.log.decide(key, decision, action, int(self.items.rows[item]), self.items.model_emotion(item))
            self.decisions[item] = decision
            return {"id": item, "decision": decision, "counts": self.counts(), "seq": self.log.records}

    def undo(self) -> dict:
        with self.lock:
            def rows_of(key):
                item = self.items.find(key)
                return int(self.items.rows[item]) if item is not None else 0

            def model_emotion_of(key):
                item = self.items.find(key)
                return self.items.model_emotion(item) if item is not None else ""

            record = self.log.undo(rows_of, model_emotion_of)
            if record is None:
                return {"id": None, "decision": "", "counts": self.counts(), "seq": self.log.records}
            item = self.items.find(record.key)
            if item is not None:
                if record.decision:
                    self.decisions[item] = record.decision
                else:
                    self.decisions.pop(item, None)
            return {"id": item, "decision": record.decision, "counts": self.counts(), "seq": self.log.records}

    def detail(self, item: int) -> dict:
        detail = self.cropper.detail(item)
        return {"id": item, "probabilities": [round(p, 6) for p in detail.probabilities],
                "shown": [{"frame": s.frame, "time_s": s.time_s, "box": list(s.box), "confidence": s.confidence,
                           "probabilities": list(s.probabilities)} for s in detail.shown]}

    def close(self) -> None:
        self.cropper.close()
        self.log.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    review: Review


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "fer-batch-review"
    sys_version = ""
    timeout = 60  # an idle kept-alive connection is closed after this many seconds

    # ------------------------------------------------------------------------------------------- checks

    def _hosts(self) -> set[str]:
        port = self.server.server_address[1]
        return {f"127.0.0.1:{port}", f"localhost:{port}"}

    def _token_given(self, query: dict[str, list[str]]) -> str:
        if query.get("token"):
            return query["token"][0]
        if self.headers.get("X-Review-Token"):
            return self.headers["X-Review-Token"]
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(self._cookie_name())
        except CookieError:
            return ""
        return morsel.value if morsel else ""

    def _cookie_name(self) -> str:
        return f"fer_review_{self.server.server_address[1]}"  # cookies ignore ports: one name per server

    def _allowed(self, query: dict[str, list[str]]) -> bool:
        if self.headers.get("Host", "").lower() not in self._hosts():
            self._refuse(HTTPStatus.FORBIDDEN, "this server answers only to 127.0.0.1:PORT and localhost:PORT")
            return False
        given = self._token_given(query).encode("utf-8", "replace")
        if not hmac.compare_digest(given, self.server.review.token.encode("ascii")):
            self._refuse(HTTPStatus.FORBIDDEN, "a missing or wrong token: open the URL that fer-batch review printed")
            return False
        return True

    # ------------------------------------------------------------------------------------------- routes

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if not self._allowed(query):
            return
        review = self.server.review
        if url.path in STATIC:
            cookie = None
            if query.get("token"):
                cookie = f"{self._cookie_name()}={review.token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(HTTPStatus.OK, review.pages[url.path], STATIC[url.path][1], cookie=cookie)
        elif url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif url.path == "/api/items":
            self._send(HTTPStatus.OK, review.listing, "application/json")
        elif url.path == "/api/state":
            with review.lock:
                state = review.state()
            self._json(HTTPStatus.OK, state)
        elif url.path in ("/api/item", "/api/crop"):
            item = self._number(query, "id", len(review.items))
            if item is None:
                return
            if url.path == "/api/item":
                self._json(HTTPStatus.OK, review.detail(item))
                return
            index = self._number(query, "k", 16)
            if index is None:
                return
            try:
                data = review.cropper.crop(item, index)
            except IndexError:
                self._refuse(HTTPStatus.NOT_FOUND, "that item shows fewer frames")
            except InputError as error:
                self._refuse(HTTPStatus.NOT_FOUND, f"cannot cut this face from its source: {error}")
            else:
                self._send(HTTPStatus.OK, data, "image/jpeg", cache="private, max-age=86400")
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "no such page")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if not self._allowed(query):
            return
        port = self.server.server_address[1]
        if self.headers.get("Origin") not in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            self._refuse(HTTPStatus.FORBIDDEN, "a POST must come from the review page itself (its Origin)")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
            return
        body = self._body()
        if body is None:
            return
        review = self.server.review
        try:
            if url.path == "/api/decide":
                item = body.get("id")
                decision, action = body.get("decision"), body.get("action")
                if not (isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(review.items)):
                    self._refuse(HTTPStatus.BAD_REQUEST, "id must be an item number")
                elif decision not in DECISIONS or action not in ACTIONS[:3]:
                    self._refuse(HTTPStatus.BAD_REQUEST, "unknown decision or action")
                else:
                    self._json(HTTPStatus.OK, review.decide(item, decision, action))
            elif url.path == "/api/undo":
                self._json(HTTPStatus.OK, review.undo())
            else:
                self._refuse(HTTPStatus.NOT_FOUND, "no such action")
        except ReviewError as error:  # the review file cannot be written: the page must not say "saved"
            print(f"fer-batch review: {error}", file=sys.stderr, flush=True)
            self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, str(error))

    def do_PUT(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "GET and POST only")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def do_HEAD(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "GET and POST only")

    # ------------------------------------------------------------------------------------------- helpers

    def _number(self, query: dict[str, list[str]], name: str, limit: int) -> int | None:
        text = (query.get(name) or [""])[0]
        if not (text.isascii() and text.isdigit() and len(text) <= 12 and int(text) < limit):
            self._refuse(HTTPStatus.NOT_FOUND, f"{name} must be a number below {limit}")
            return None
        return int(text)

    def _body(self) -> dict | None:
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length needed")
            return None
        if not 0 <= length <= MAX_BODY:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BODY} bytes")
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError):
            self._refuse(HTTPStatus.BAD_REQUEST, "not JSON")
            return None
        if not isinstance(body, dict):
            self._refuse(HTTPStatus.BAD_REQUEST, "send a JSON object")
            return None
        return body

    def _json(self, status: HTTPStatus, value) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode("utf-8"), "application/json")

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        self._send(status, json.dumps({"error": reason}).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str, cookie: str | None = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", cache)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        if status >= 400 and self.headers.get("Content-Length"):
            self.close_connection = True  # a refused request's body may still be unread
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:
        pass  # quiet: the terminal shows the URL and problems, not every crop


def serve(csv_path: str | Path, port: int = 0, open_browser: bool = True) -> int:
    """Serve the review of ``csv_path`` until Ctrl-C: print the URL on stdout (first line, flushed), open it in
    the browser unless ``open_browser`` is False. Returns the exit status; raises ReviewError before serving."""
    review = Review(csv_path)
    try:
        try:
            server = _Server((HOST, port), _Handler)
        except OSError as error:
            raise ReviewError(f"cannot listen on {HOST}:{port}: {error.strerror or error} (choose another --port, "
                              f"or 0 for any free one)") from None
        server.review = review
        try:
            url = f"http://{HOST}:{server.server_address[1]}/?token={review.token}"
            print(url, flush=True)
            counts = review.counts()
            print(f"fer-batch review: {counts['items']:,} items in {review.csv_path} ({counts['reviewed']:,} "
                  f"reviewed); decisions go to {review.log.path} as they are made. Ctrl-C stops.", file=sys.stderr,
                  flush=True)
            if counts["elsewhere"]:
                print(f"fer-batch review: {counts['elsewhere']:,} decisions in {review.log.path} name items this "
                      f"CSV does not have (was it labelled again?); --apply still applies them by frame",
                      file=sys.stderr)
            if open_browser:
                threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
            server.serve_forever(poll_interval=0.25)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        print(f"\nfer-batch review: stopped; {review.log.records:,} records in {review.log.path}", file=sys.stderr)
        return 0
    finally:
        review.close()
