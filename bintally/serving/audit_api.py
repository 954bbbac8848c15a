"""The audit API (`bintally serve --audit-db URL`) and its dashboard at GET /audit.

    POST /v1/audit-runs                 multipart: csv (totals or SKU lines) or records (JSON) + photos -> score, worklist
    GET  /v1/audit-runs[/{id}]          runs with their metrics
    GET  /v1/audit-runs/{id}/tasks      a run's worklist (reviewer view), ?status= to filter
    GET  /v1/tasks                      the blind views of the tasks the caller may count now, ?run_id= to filter
    GET  /v1/tasks/{id}                 the counter's blind view: bin and photo (and a lined record's SKUs with their
                                        sizes), never a recorded quantity, the prediction or the explanation
    GET  /v1/tasks/{id}/review          the reviewer's view: record, prediction, probabilities, explanation, counts,
                                        per-line record, count, recount and final, resolution
    POST /v1/tasks/{id}/counts          {"qty"?, "lines"?: {sku: qty}, "found"?: {sku: qty}, "comment"?,
                                        "count_index"?} (+ Idempotency-Key header); a lined task takes "lines"
    POST /v1/tasks/{id}/review          {"approve", "final"?, "final_lines"?: {sku: qty}, "reason"?, "outcome"?, "comment"?}
    GET  /v1/labels/export              approved recounts as CSV (?lines=1: one row per SKU line)
    GET  /v1/snapshots/{id}/image       the photo: uploaded bytes from the store, else fetched under the allowlist

Each route checks its caller first (bintally.serving.auth: a user's token or dashboard session and one of the route's
roles, docs/serving.md "Users, roles and tokens"); the names on runs, counts and reviews are the caller's ("by" and
"created_by" in a body only with --audit-auth open). A counter's answers never hold a recorded quantity, the prediction
or a server path; the reviewer's name the photo by URL and file name, never by its path.

The store calls are synchronous (SQLAlchemy) and run in threads. Every refusal is JSON {"error": ...}: 404 for an
unknown run, task or snapshot (and for every route when the server has no --audit-db), 409 for a transition the
task's state does not allow or one lost to a concurrent writer, 400 for a bad body (a control character in any of
its text included, checked before the database sees it) or a value the database cannot store, 503 only when the
database is busy or unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BeforeValidator
from starlette.datastructures import UploadFile

from bintally.audit import people
from bintally.errors import ConfigError, DataError
from bintally.serving import auth
from bintally.serving.bodies import json_fields, media_type, read_form, text_field
from bintally.serving.config import AUDIT_DB_HELP, ServeConfig
from bintally.serving.dataplane import DataPlane
from bintally.serving.errors import RequestError
from bintally.serving.errors import uncounted as fail
from bintally.serving.sessions import session_router
from bintally.serving.web import page_response, page_settings

log = logging.getLogger("bintally.serving")
PAGE = Path(__file__).parent / "static" / "audit.html"
MAX_PHOTOS = 10_000  # photos in one create-run request (the body limit, --max-body-mb, bounds them first)
MAX_COMMENT = 2000
RUN_FIELDS = ("csv", "records", "photos", "name", "score", "budget", "threshold", "control", "tolerance", "created_by", "lines")
SOURCES = "a 'csv' file (bin_id,image,record_qty[,captured_at], or SKU lines bin_id,image,sku,qty[,...]) or a 'records' JSON file"
COUNTER_FIELDS = ("id", "run_id", "bin_id", "snapshot_id", "status", "assignee", "count_index", "accepts_count", "lines")  # nothing else, ever
COUNTER_LINE_FIELDS = ("sku", "length_in", "width_in", "height_in", "weight_lb")  # a line to count: never its recorded quantity
COUNT_KEYS = {"qty", "lines", "found", "by", "comment", "count_index"}
REVIEW_KEYS = {"approve", "final", "final_lines", "reason", "outcome", "by", "comment"}
OFF = f"the audit API is off: start the server with --audit-db ({AUDIT_DB_HELP})"


class AuditService:
    """The audit store behind the API: opened at start-up when the server has --audit-db, else every route says 404."""

    def __init__(self, config: ServeConfig, plane: DataPlane, store=None):
        self.config, self.plane, self.store = config, plane, store
        # one scoring at a time per process (it uses the CPU the model serves with); waiting requests wait here, on the
        # event loop, not in the thread pool that every store call shares
        self.run_gate = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.config.audit_db)

    def open(self) -> None:
        if self.enabled and self.store is None:
            from bintally.audit.store import open_store

            self.store = open_store(self.config.audit_db)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def require(self):
        if not self.enabled:
            raise fail(404, OFF)
        if self.store is None:
            raise fail(503, "the audit store is not open yet", {"Retry-After": "1"})
        return self.store

    async def call(self, fn, *args, **kwargs):
        """fn(store, *args, **kwargs) in a thread; the store's exceptions as JSON refusals (never a 500)."""
        from sqlalchemy.exc import SQLAlchemyError

        from bintally.audit.store import StoreError
        from bintally.audit.workflow import Conflict, NotFound

        store = self.require()
        try:
            return await asyncio.to_thread(fn, store, *args, **kwargs)
        except StoreError as e:
            raise refused_by_database(e) or unavailable(str(e)) from None
        except people.Unauthorized as e:
            raise auth.unauthorized(str(e)) from None
        except people.Forbidden as e:
            raise auth.forbidden(str(e)) from None
        except NotFound as e:
            raise fail(404, str(e)) from None
        except Conflict as e:
            raise fail(409, str(e)) from None
        except (ConfigError, DataError) as e:
            raise fail(400, str(e)) from None
        except SQLAlchemyError as e:
            raise refused_by_database(e) or unavailable(f"the audit database is busy or unreachable ({e.__class__.__name__})") from None


def unavailable(message: str) -> RequestError:
    """503 + Retry-After: the database is unreachable, locked or failing, which may pass."""
    log.warning("%s", message)
    return fail(503, f"{message}; retry", {"Retry-After": "1"})


def causes(e: BaseException):
    """`e` and the exceptions it was raised from or while handling (a StoreError hides the database's own)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def refused_by_database(e: BaseException) -> RequestError | None:
    """The refusal of a request whose value the database will never take, whatever the retries: 400 for a value it
    cannot store (PostgreSQL: a NUL byte, a string too long, a number out of range, a byte sequence invalid in its
    encoding), 409 for a constraint the write breaks. None when the database itself failed (503)."""
    from sqlalchemy.exc import DataError as DatabaseDataError
    from sqlalchemy.exc import IntegrityError

    from bintally.audit.store import one_line

    for inner in causes(e):
        if isinstance(inner, DatabaseDataError) or dbapi_data_error(inner):
            return fail(400, f"the audit database cannot store a value of this request: {one_line(inner)}")
        if isinstance(inner, IntegrityError):
            return fail(409, f"the request conflicts with what the audit database holds: {one_line(inner)}")
    return None


def dbapi_data_error(e: BaseException) -> bool:
    """A driver's DataError (psycopg.DataError and its subclasses, sqlite3.DataError), not wrapped by SQLAlchemy."""
    return any(c.__name__ == "DataError" and c.__module__.split(".")[0] in ("psycopg", "psycopg2", "sqlite3")
               for c in type(e).__mro__)


# ---------------------------------------------------------------- request bodies


def whole_number(doc: dict, key: str) -> int | None:
    """A quantity field (absent: None), checked as the workflow checks it, its refusal a 400."""
    from bintally.audit.workflow import check_qty

    value = doc.get(key)
    try:
        return None if value is None else check_qty(value, key)
    except ConfigError as e:
        raise fail(400, str(e)) from None


def text(doc: dict, key: str, limit: int = 100) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise fail(400, f"{key} must be text of at most {limit} characters")
    return value


@dataclass
class RunForm:
    """A create-run request: the CSV or the JSON records, the text fields, and the photos uploaded with it."""

    csv_name: str = ""
    csv_data: bytes | None = None
    records_data: bytes | None = None  # the `records` part: {"bins": [...]} (then csv_name is its name)
    fields: dict[str, str] = field(default_factory=dict)
    photos: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes
    names: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    async def add(self, name: str, value) -> None:
        if name not in RUN_FIELDS:
            raise fail(400, f"unknown form field {name!r}: expected {', '.join(RUN_FIELDS)}")
        if name == "records":
            return await self.add_records(value)
        if name not in ("csv", "photos"):
            return self.add_text(name, value)
        if not isinstance(value, UploadFile):
            raise fail(400, f"form field {name!r} must be a file")
        data = await value.read()
        if name == "csv":
            self.add_csv(value.filename, data)
        else:
            self.add_photo(value.filename, data)

    async def add_records(self, value) -> None:
        """The JSON records document, sent as a file or as a text field."""
        from bintally.audit.snapshots import upload_name

        if self.csv_data is not None:
            raise fail(400, f"send one source: {SOURCES}, not both")
        if self.records_data is not None:
            raise fail(400, "more than one 'records' part: send one")
        if isinstance(value, UploadFile):
            self.csv_name, self.records_data = upload_name(value.filename) or "records.json", await value.read()
        else:
            self.csv_name, self.records_data = "records.json", value.encode()

    def add_text(self, name: str, value) -> None:
        if isinstance(value, UploadFile):
            raise fail(400, f"form field {name!r} must be text, not a file")
        if name in self.fields:
            raise fail(400, f"form field {name!r} given twice")
        self.fields[name] = value

    def add_csv(self, filename: str | None, data: bytes) -> None:
        from bintally.audit.snapshots import upload_name

        if self.csv_data is not None:
            raise fail(400, "more than one 'csv' file: send one")
        if self.records_data is not None:
            raise fail(400, f"send one source: {SOURCES}, not both")
        self.csv_name, self.csv_data = upload_name(filename) or "upload.csv", data

    def add_photo(self, filename: str | None, data: bytes) -> None:
        from bintally.audit.snapshots import upload_name
        from bintally.audit.uploads import sha256_of

        name = upload_name(filename)
        if not name and not data:
            return  # a browser's empty file input
        if not name:
            raise fail(400, "a 'photos' file has no file name: the CSV's image column names photos by file name")
        digest = sha256_of(data)
        if self.names.get(name, digest) != digest:
            raise fail(400, f"two different photos are both named {name!r}")
        self.names[name], self.photos[digest] = digest, data

    def csv_text(self) -> str:
        """The CSV as text; a 400 naming its line when a control character other than a line break or tab is in it."""
        try:
            text = self.csv_data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise fail(400, f"{self.csv_name}: not a UTF-8 text CSV") from None
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): it splits at some control characters too
            text_field(line, f"{self.csv_name} line {number}", multiline=True)
        return text


async def read_run_form(request: Request) -> RunForm:
    if media_type(request) != "multipart/form-data":
        raise fail(415, f"send multipart/form-data: {SOURCES}, and 'photos' files")
    form = await read_form(request, MAX_PHOTOS + 1, len(RUN_FIELDS) + 8, f"too many photos in one request: the limit is {MAX_PHOTOS}")
    run_form = RunForm()
    try:
        for name, value in form.multi_items():
            await run_form.add(name, value)
    finally:
        await form.close()
    if run_form.csv_data is None and run_form.records_data is None:
        raise fail(400, f"no 'csv' file (nor 'records'): send {SOURCES}")
    return run_form


def form_number(fields: dict, key: str, kind):
    value = (fields.get(key) or "").strip()
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise fail(400, f"{key} must be {'a whole number' if kind is int else 'a number'}, got {value[:40]!r}") from None


def image_url(row: dict) -> str:
    return f"/v1/snapshots/{row['snapshot_id']}/image"


def blind_view(view: dict) -> dict:
    """A task as a counter may see it: COUNTER_FIELDS and each line's COUNTER_LINE_FIELDS, and the photo's URL."""
    lines = [{k: line[k] for k in COUNTER_LINE_FIELDS if k in line} for line in view.get("lines", [])]
    return {k: view[k] for k in COUNTER_FIELDS if k in view} | {"lines": lines, "image_url": image_url(view)}


def reviewer_row(row: dict) -> dict:
    """A task as a reviewer sees it, its photo by URL and name: never the server's path of the file."""
    return {k: v for k, v in row.items() if k != "image"} | {"image_url": image_url(row), "image_name": image_name(row["image"])}


def image_name(uri: str) -> str:
    """How a reviewer knows a photo: its URI when remote (s3://, https://), the file's name alone when local, else "uploaded"."""
    from bintally.audit.snapshots import UPLOAD_SCHEME

    if uri.startswith(UPLOAD_SCHEME):
        return "uploaded"
    if uri.startswith(("s3://", "https://", "http://")):
        return uri
    return uri.replace("\\", "/").rstrip("/").rpartition("/")[2]


# ---------------------------------------------------------------- creating a run


def form_snapshots(form: RunForm) -> list:
    """The snapshots of the CSV or the JSON records, sorted as `bintally audit run` sorts them (the order never matters);
    images name uploads or URIs."""
    from bintally.audit.snapshots import csv_snapshots, json_snapshots

    try:
        if form.records_data is not None:
            snapshots = json_snapshots(records_document(form), form.csv_name, uploads=form.names)
        else:
            snapshots = csv_snapshots(Path(form.csv_name), text=form.csv_text(), base=Path("/"), uploads=form.names)
    except DataError as e:
        raise fail(400, str(e)) from None
    if not snapshots:
        what = "no bins: give one per bin snapshot" if form.records_data is not None else "no rows: give one row per bin snapshot"
        raise fail(400, f"{form.csv_name}: {what}")
    return sorted(snapshots, key=lambda s: (s.bin_id, s.image))


def records_document(form: RunForm):
    """The `records` part as JSON (a 400 when it is not)."""
    from bintally.serving.bodies import parse_json

    try:
        return parse_json(form.records_data, f"{form.csv_name} (the 'records' part)", where=f"{form.csv_name}: ")
    except RequestError as e:
        raise fail(e.status, e.message) from None


def run_config(form: RunForm, config: ServeConfig, who: people.Principal):
    """The AuditConfig of a create-run request: its form fields, the server's model, backend and allowlists."""
    from bintally.audit.config import AuditConfig

    fields = form.fields
    settings = {k: form_number(fields, k, kind) for k, kind in
                (("budget", float), ("threshold", float), ("control", float), ("tolerance", int))}
    audit = AuditConfig(model=str(config.model), data=form.csv_name, name=(fields.get("name") or "").strip() or None,
                        score=(fields.get("score") or AuditConfig.score).strip(), lines=(fields.get("lines") or "use").strip(),
                        **{k: v for k, v in settings.items() if v is not None}, backend=config.backend,
                        created_by=who.name, **asdict(config.source_policy()), progress=False)
    try:
        return audit.validate()
    except ConfigError as e:
        raise fail(400, str(e)) from None


def used_uploads(snapshots: list) -> set[str]:
    """The sha256 of each uploaded photo the CSV names."""
    from bintally.audit.snapshots import UPLOAD_SCHEME

    return {s.image[len(UPLOAD_SCHEME):] for s in snapshots if s.image.startswith(UPLOAD_SCHEME)}


def score_run(store, audit, snapshots: list, form: RunForm, counter, who: people.Principal) -> tuple:
    """(result, run summary, unreadable photos) of scoring the run; the photos it uses are kept in the store."""
    from bintally.audit import queries
    from bintally.audit.run import audit_run
    from bintally.audit.uploads import save_photos, unreadable_photos

    result = audit_run(audit, snapshots=snapshots, counter=counter, store=store, uploads=form.photos, shard=(0, 1), actor=who)
    save_photos(store, {digest: form.photos[digest] for digest in used_uploads(snapshots)})
    return result, queries.get_run_summary(store, result.run_id), unreadable_photos(store, result.run_id)


def created_run(form: RunForm, snapshots: list, result, summary: dict, problems: list[dict]) -> JSONResponse:
    """201 with the run and its metrics (200 when it already existed); unreadable and unused photos by their file names."""
    from bintally.audit.snapshots import UPLOAD_SCHEME

    shown_as = {UPLOAD_SCHEME + digest: name for name, digest in form.names.items()}
    for problem in problems:
        problem["image"] = shown_as.get(problem["image"], problem["image"])
    used = used_uploads(snapshots)
    unused = sorted(name for name, digest in form.names.items() if digest not in used)
    body = summary | {"reused": result.reused, "scored": result.scored, "unreadable": problems, "unused_photos": unused}
    return JSONResponse(body, status_code=200 if result.reused else 201)


async def snapshot_photo(service: AuditService, snapshot_id: int, detailed: bool) -> tuple[bytes, str]:
    """(bytes, media type) of a snapshot's photo: uploaded bytes from the store, else fetched under the allowlist. Why one
    cannot be served names its URI only when `detailed` (a reviewer's request: a counter never learns a server path)."""
    from bintally.audit import queries
    from bintally.audit.snapshots import UPLOAD_SCHEME, is_uri
    from bintally.audit.uploads import media_type_of

    uri, data, media = await service.call(queries.snapshot_photo, snapshot_id)
    if data is not None:
        return data, media or media_type_of(data)
    if uri.startswith(UPLOAD_SCHEME):
        raise fail(404, f"the uploaded photo of snapshot {snapshot_id} is not in the store")
    try:
        target = uri if is_uri(uri) else Path(uri).as_uri()  # a path (a CLI run): served only under --file-root
        data = await service.plane.fetch_uri(target)
    except ValueError:
        raise photo_refused(snapshot_id, f"{uri!r} is not a URI or absolute path", detailed) from None
    except RequestError as e:
        raise photo_refused(snapshot_id, e.message, detailed) from None
    return data, media_type_of(data)


ROW_ID = re.compile(r"0|[1-9][0-9]{0,18}")
MAX_ROW_ID = 2**63 - 1


def row_id(value) -> int:
    """A run, task or snapshot id in a path, as written: ASCII digits only. Pydantic's int would also take '1_0' (10),
    '+1', ' 1', '1.0' and '01', so another spelling of a number could name another row."""
    if isinstance(value, str) and ROW_ID.fullmatch(value) and int(value) <= MAX_ROW_ID:
        return int(value)
    raise ValueError(f"an id is a whole number written in ASCII digits (no sign, spaces, '_', '.' or leading 0), "
                     f"at most {MAX_ROW_ID}")


RowId = Annotated[int, BeforeValidator(row_id)]


def photo_refused(snapshot_id: int, why: str, detailed: bool) -> RequestError:
    if not detailed:
        log.info("the photo of snapshot %d cannot be served to a counter: %s", snapshot_id, why)
        return fail(404, f"the photo of snapshot {snapshot_id} cannot be served: ask a reviewer")
    return fail(404, f"the photo of snapshot {snapshot_id} cannot be served: {why}")


# ---------------------------------------------------------------- the router

CREATE_RUN_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "csv": {"type": "string", "format": "binary", "description": "bin_id,image,record_qty[,captured_at], or SKU lines "
                "bin_id,image,sku,qty[,length,width,height,unit,weight,weight_unit][,captured_at] (send csv or records)"},
        "records": {"type": "string", "format": "binary", "description": 'JSON {"bins": [{"bin_id", "image", "captured_at"?, '
                    '"record_qty"?, "lines"?: [{"sku", "qty", "length"?, "width"?, "height"?, "unit"?, "weight"?, "weight_unit"?}]}]}'},
        "lines": {"type": "string", "enum": ["use", "ignore"]},
        "photos": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "name": {"type": "string"}, "budget": {"type": "number"}, "threshold": {"type": "number"},
        "control": {"type": "number"}, "tolerance": {"type": "integer"}, "created_by": {"type": "string"}}}}}}}


def audit_router(service: AuditService) -> APIRouter:
    """The dashboard, then the routes by resource: runs, tasks, the labels export and snapshot photos."""
    router = APIRouter(tags=["Audit"], include_in_schema=service.enabled)  # off: the routes only say how to turn them on

    @router.get("/audit", response_class=HTMLResponse, summary="The audit dashboard: runs, worklists, blind counts, reviews")
    async def page():
        return page_response(PAGE, page_settings(service.plane, service.config) | {"auditEnabled": service.enabled,
                                                                                   "auditAuth": service.config.audit_auth})

    router.include_router(session_router(service))
    add_run_routes(router, service)
    add_task_routes(router, service)
    add_output_routes(router, service)
    return router


def add_run_routes(router: APIRouter, service: AuditService) -> None:
    from bintally.audit import queries
    from bintally.audit.snapshots import totals_only

    plane = service.plane

    @router.post("/v1/audit-runs", status_code=201, summary="Score uploaded bin snapshots and write the recount worklist (auditor)",
                 openapi_extra=CREATE_RUN_BODY)
    async def create_run(request: Request):
        """201 with the run and its metrics; 200 when the same run (name, snapshots, settings) already existed."""
        who = await auth.principal(service, request, "auditor")
        plane.require_loaded()
        form = await read_run_form(request)
        who = auth.signed(who, form.fields, "created_by", default="api")
        snapshots = form_snapshots(form)
        audit = run_config(form, service.config, who)
        if audit.lines == "ignore":
            snapshots = totals_only(snapshots)
        async with service.run_gate:
            result, summary, problems = await service.call(score_run, audit, snapshots, form, plane.counter, who)
        return created_run(form, snapshots, result, summary, problems)

    @router.get("/v1/audit-runs", summary="Every audit run with its metrics (auditor, reviewer)")
    async def runs(request: Request):
        await auth.principal(service, request, "auditor", "reviewer")
        return {"runs": await service.call(queries.list_runs)}

    @router.get("/v1/audit-runs/{run_id}", summary="One audit run with its metrics (auditor, reviewer)")
    async def run(run_id: RowId, request: Request):
        await auth.principal(service, request, "auditor", "reviewer")
        return await service.call(queries.get_run_summary, run_id)

    @router.get("/v1/audit-runs/{run_id}/tasks", summary="A run's recount worklist: record, prediction, score (reviewer, auditor)")
    async def tasks(run_id: RowId, request: Request, status: str | None = None):
        await auth.principal(service, request, "reviewer", "auditor")
        rows = await service.call(queries.list_tasks, run_id, status)
        return {"run_id": run_id, "status": status, "tasks": [reviewer_row(r) for r in rows]}


def add_task_routes(router: APIRouter, service: AuditService) -> None:
    from bintally.audit import queries

    @router.get("/v1/tasks", summary="The tasks the caller may count now, blind: open or assigned to them (counter)")
    async def counter_tasks(request: Request, run_id: RowId | None = None):
        who = await auth.principal(service, request, "counter")
        rows = await service.call(queries.counter_tasks, who.name if auth.users_mode(service) else None, run_id)
        return {"tasks": [blind_view(row) for row in rows]}

    @router.get("/v1/tasks/{task_id}", summary="The counter's blind view of a task: the bin, its SKUs and its photo only")
    async def counter_task(task_id: RowId, request: Request):
        who = await auth.principal(service, request, "counter", "reviewer", "auditor")
        if not auth.sees_records(who) and not await service.call(queries.counter_may_see, task_id, who.name):
            raise auth.forbidden(f"task {task_id} is not yours to count (assigned to someone else, or closed)")
        return blind_view(await service.call(queries.counter_view, task_id))

    @router.get("/v1/tasks/{task_id}/review", summary="The reviewer's view of a task: record, prediction, counts, resolution")
    async def reviewer_task(task_id: RowId, request: Request):
        await auth.principal(service, request, "reviewer", "auditor")
        return reviewer_row(await service.call(queries.task_detail, task_id))

    add_write_routes(router, service)


def add_write_routes(router: APIRouter, service: AuditService) -> None:
    from bintally.audit import queries, workflow

    @router.post("/v1/tasks/{task_id}/counts", summary="Submit a blind count (counter; Idempotency-Key: a retry gets the first answer)")
    async def count(task_id: RowId, request: Request):
        """{"qty": N, "comment"?: TEXT, "count_index"?: 0 | 1} ("by": NAME only with --audit-auth open): count_index
        (default 0) is the count the client means, as GET /v1/tasks/{id} said; a count that lost a race to another is
        refused (409), never stored as the recount. A task whose record has SKU lines (GET /v1/tasks/{id} lists them)
        takes "lines": {SKU: N} for every one of them and "found": {SKU: N} for SKUs off the record; "qty", if given,
        must be their sum."""
        who = await auth.principal(service, request, "counter")
        doc = await json_fields(request, COUNT_KEYS, required_names(who, "by"))
        who, qty, comment = auth.signed(who, doc, "by"), whole_number(doc, "qty"), text(doc, "comment", MAX_COMMENT)
        key = request.headers.get("idempotency-key")
        if key is not None:
            text_field(key, "the Idempotency-Key header")
        outcome = await service.call(workflow.submit_count, task_id, qty, who, comment=comment, idempotency_key=key,
                                     count_index=doc.get("count_index", 0), lines=doc.get("lines"), found=doc.get("found"))
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        return JSONResponse({"task_id": outcome.task_id, "count_index": outcome.count_index, "status": outcome.status},
                            headers=headers)

    @router.post("/v1/tasks/{task_id}/review", summary="Approve (with the final quantity, or final_lines per SKU) or reject a task in review (reviewer)")
    async def review(task_id: RowId, request: Request):
        who = await auth.principal(service, request, "reviewer")
        doc = await json_fields(request, REVIEW_KEYS, ("approve", *required_names(who, "by")))
        if not isinstance(doc["approve"], bool):
            raise fail(400, "approve must be true or false")
        who, final, comment = auth.signed(who, doc, "by"), whole_number(doc, "final"), text(doc, "comment", MAX_COMMENT)
        reason, outcome = text(doc, "reason", 40), text(doc, "outcome", 40)
        resolution = await service.call(workflow.review, task_id, doc["approve"], who, final=final, reason=reason,
                                        outcome=outcome, comment=comment, final_lines=doc.get("final_lines"))
        return {"task_id": task_id, "status": resolution.decision, "resolution": queries.resolution_row(resolution)}


def required_names(who, key: str) -> tuple[str, ...]:
    """The body must name its signer in open mode only (users mode takes the name from the token)."""
    return (key,) if who.kind == "open" else ()


def add_output_routes(router: APIRouter, service: AuditService) -> None:
    from bintally.audit import queries

    @router.get("/v1/labels/export", summary="Approved recounts as CSV (image, bin_id, count, record_qty, approved_at, task_id); "
                "?lines=1: per SKU line (bin_id, image, sku, final_qty, record_qty, variance, task_id, approved_at) (auditor)",
                response_class=Response, responses={200: {"content": {"text/csv": {}}}})
    async def labels(request: Request, lines: bool = False):
        await auth.principal(service, request, "auditor")
        if lines:
            body = await service.call(lambda store: queries.line_labels_csv(queries.approved_line_labels(store)))
        else:
            body = await service.call(lambda store: queries.labels_csv(queries.approved_labels(store)))
        name = "bintally-line-labels.csv" if lines else "bintally-labels.csv"
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    @router.get("/v1/snapshots/{snapshot_id}/image", summary="A snapshot's photo (reviewer, auditor; a counter: of a task they may count)",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    async def image(snapshot_id: RowId, request: Request):
        who = await auth.principal(service, request, "counter", "reviewer", "auditor")
        if not auth.sees_records(who) and not await service.call(queries.counter_may_see_photo, snapshot_id, who.name):
            raise auth.forbidden(f"snapshot {snapshot_id} is not the photo of a task you may count")
        data, media = await snapshot_photo(service, snapshot_id, detailed=auth.sees_records(who))
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})
