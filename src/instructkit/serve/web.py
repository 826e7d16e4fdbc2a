"""The browser side of `instructkit serve`: a chat page at `/` and a run page at `/run`.

The pages are static files shipped in the package (`serve/static/`, plain HTML, CSS and
JavaScript, no build step, nothing from another host: a Content-Security-Policy says so
to the browser). The chat page talks to the server's own `/v1/chat/completions`; the run
page reads a run directory through three JSON routes under `/run/data/`:

- `metrics?since=N`: the rows of metrics.jsonl from row N on (polled while training runs;
  a last line still being written is left for the next poll),
- `config`: the resolved config.yaml,
- `responses`: responses.json with each record's scores from scores.json (joined by the
  evaluator's record key, so scores of records that changed since are not shown).

The pages and `/web/info` (what the page needs to know to start: model, context, whether
a key is needed) are public, like `/health`; the data routes and the APIs take the key.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from instructkit import __version__
from instructkit.errors import UserError
from instructkit.evaluate import record_key

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/run": "run.html"}
PUBLIC = ("/health", "/web/info", "/favicon.ico", *PAGES)
RUN_FILES = ("metrics.jsonl", "config.yaml", "responses.json", "scores.json")
SCORE_FIELDS = ("exact_match", "rouge_l", "judge_score", "judge_reply", "judge_error")
# The pages' own requests only: no other host, no inline script, no plugins, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def is_public(path: str) -> bool:
    """Paths served without the API key: the pages, their files, and what they start from."""
    return path in PUBLIC or path.startswith("/static/")


def run_dir_of(spec: str | None) -> Path | None:
    """The run directory behind a model spec (RUN or RUN/model), or None for anything else."""
    if not spec:
        return None
    path = Path(spec)
    for candidate in (path, path.parent):
        if candidate.is_dir() and any((candidate / name).is_file() for name in RUN_FILES):
            return candidate.resolve()
    return None


def check_run_dir(spec: str) -> Path:
    """`--run RUN`: a directory, though training may not have written anything yet."""
    path = Path(spec)
    if not path.is_dir():
        raise UserError(f"--run {spec}: not a directory (give a run directory, runs/NAME)")
    return path.resolve()


# ---- reading a run directory (while training may be writing it) -------------------------


def read_metrics(path: Path) -> list[dict]:
    """The complete rows of metrics.jsonl; an unfinished last line is left for the next read."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # the trainer is still writing this line
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _read_json(path: Path) -> object | None:
    """A JSON file's content, or None when it is missing or not (yet) valid."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_config(run_dir: Path) -> dict:
    """The resolved config as the YAML text and its values, or None for both before it exists."""
    path = run_dir / "config.yaml"
    try:
        text = path.read_text(encoding="utf-8")
        values = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return {"path": str(path), "text": None, "values": None}
    return {"path": str(path), "text": text, "values": values if isinstance(values, dict) else None}


def read_responses(run_dir: Path) -> dict:
    """Test records with their model response and, where scores.json has them, their scores."""
    responses = _read_json(run_dir / "responses.json")
    scores = _read_json(run_dir / "scores.json")
    scores = scores if isinstance(scores, dict) else {}
    scored = {
        entry["key"]: entry
        for entry in scores.get("records") or []
        if isinstance(entry, dict) and "key" in entry
    }
    if isinstance(responses, list):
        records = []
        for record in responses:
            if not isinstance(record, dict):
                continue
            entry = scored.get(_key(record)) or {}
            records.append({**record, **{f: entry[f] for f in SCORE_FIELDS if f in entry}})
    else:  # only the scores file: it holds the records too
        records = list(scored.values())
    return {
        "records": records,
        "responses_file": (run_dir / "responses.json").is_file(),
        "scores_file": bool(scores),
        "metrics": scores.get("metrics"),
        "judge": scores.get("judge"),
    }


def _key(record: dict) -> str | None:
    try:
        return record_key(record)
    except (KeyError, TypeError):
        return None


def _stamp(run_dir: Path, names: tuple[str, ...]) -> str:
    """An ETag from the files' sizes and modification times (nothing read when unchanged)."""
    parts = []
    for name in names:
        try:
            stat = (run_dir / name).stat()
            parts.append(f"{stat.st_size}-{stat.st_mtime_ns}")
        except OSError:
            parts.append("none")
    return '"' + ".".join(parts) + '"'


def _cached_json(request: Request, run_dir: Path, names: tuple[str, ...], read: Callable):
    """JSON that the browser revalidates: 304 while the files behind it are unchanged."""
    tag = _stamp(run_dir, names)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return JSONResponse(read(), headers=headers)


# ---- routes ----------------------------------------------------------------------------


def _page(name: str) -> FileResponse:
    return FileResponse(
        STATIC / name, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
    )


def web_router(run_dir: Path | None, *, engine=None, key_required: bool = False) -> APIRouter:
    """The pages, their static files, /web/info and, with a run directory, /run/data/*."""
    router = APIRouter()
    static_files = {p.name for p in STATIC.iterdir() if p.is_file()}

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def chat_page():
        return _page("index.html") if engine is not None else RedirectResponse("/run")

    @router.api_route("/run", methods=["GET", "HEAD"], include_in_schema=False)
    def run_page():
        if run_dir is None:
            return JSONResponse(
                {"error": "no run directory: serve one with --model RUN or --run RUN"}, 404
            )
        return _page("run.html")

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in static_files:  # only the shipped files, never a path outside them
            return JSONResponse({"error": f"no static file {name!r}"}, 404)
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    @router.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @router.get("/web/info")
    def info():
        return {
            "version": __version__,
            "model": engine.name if engine is not None else None,
            "context_length": engine.context_length if engine is not None else None,
            "max_new_tokens": engine.config.max_new_tokens if engine is not None else None,
            "run": run_dir.name if run_dir is not None else None,
            "key_required": key_required,
        }

    if run_dir is None:
        return router

    @router.get("/run/data/metrics")
    def metrics(since: int = 0):
        path = run_dir / "metrics.jsonl"
        rows = read_metrics(path)
        modified = path.stat().st_mtime if path.is_file() else None
        return {
            "total": len(rows),
            "rows": rows[max(since, 0) :],
            "modified": modified,
            "now": time.time(),  # the page says how long ago, by the server's clock
        }

    @router.get("/run/data/config")
    def config(request: Request):
        return _cached_json(request, run_dir, ("config.yaml",), lambda: read_config(run_dir))

    @router.get("/run/data/responses")
    def responses(request: Request):
        names = ("responses.json", "scores.json")
        return _cached_json(request, run_dir, names, lambda: read_responses(run_dir))

    return router


def key_accepted(request: Request, api_key: str | None) -> bool:
    """Whether the request may pass: no key set, a public path, or the right bearer token."""
    if not api_key or is_public(request.url.path):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), api_key)


def create_run_app(run_dir: Path, api_key: str | None = None) -> FastAPI:
    """`serve --run RUN` without a model: only the run page and its data."""
    app = FastAPI(title="instructkit", version=__version__, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if not key_accepted(request, api_key):
            message = "a valid 'Authorization: Bearer <key>' header is required"
            return JSONResponse({"error": {"message": message}}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": None, "run": run_dir.name}

    app.include_router(web_router(run_dir, key_required=bool(api_key)))
    return app
