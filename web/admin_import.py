"""Device import from a CMMS export: the upload page, the import, the empty template file.

``/admin/devices/import`` takes a CSV file (an upload, or pasted text where uploading is
not possible) and hands it to ``policy.csvimport.import_devices``, which imports every
row or none. A refused file comes back with every problem by line number (the header is
line 1) and the statement that nothing was imported; a good one with the counts of
devices created, updated and unchanged. ``/admin/devices/import.csv`` is an empty file
with the header row to fill in. Admins only, as the import itself requires.

A file that is not UTF-8 is refused here, before the import, with how to save it right
(spreadsheets offer "CSV UTF-8"); guessing another encoding could put wrong characters
into device records without anyone noticing.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web

from policy import csvimport
from policy.errors import InvalidInput, PolicyError
from web.admin import refused, status, text
from web.auth import actor, requires
from web.context import ctx
from web.render import flash, redirect, render

MAX_UPLOAD_ERRORS_SHOWN = 200
SAMPLE_NAME = "sallyport-devices.csv"


def _import_page(
    request: web.Request,
    *,
    pasted: str = "",
    filename: str = "",
    error: str | None = None,
    problems: list[tuple[int, str]] | None = None,
    code: int = 200,
) -> web.Response:
    problems = problems or []
    return render(
        request,
        "admin/import.html",
        status=code,
        error=error,
        pasted=pasted,
        filename=filename,
        problems=problems[:MAX_UPLOAD_ERRORS_SHOWN],
        more=max(0, len(problems) - MAX_UPLOAD_ERRORS_SHOWN),
        required=csvimport.REQUIRED,
        optional=csvimport.OPTIONAL,
    )


@requires("admin")
async def import_get(request: web.Request) -> web.StreamResponse:
    return _import_page(request)


def _upload(form: Any) -> tuple[str, str, str]:
    """The CSV text, the uploaded file's name ("" when pasted) and the pasted text."""
    field = form.get("csv")
    pasted = field if isinstance(field, str) else ""
    upload = form.get("file")
    if isinstance(upload, web.FileField) and upload.filename:
        raw = upload.file.read()
        try:
            return raw.decode("utf-8-sig"), upload.filename, pasted
        except UnicodeDecodeError:
            raise InvalidInput(
                "csv-encoding",
                f"{upload.filename} is not UTF-8 text; save it from the spreadsheet as "
                "“CSV UTF-8” and import it again. Nothing was imported.",
            ) from None
    if not pasted.strip():
        raise InvalidInput("csv-missing", "choose a CSV file, or paste its contents")
    return pasted, "", pasted


@requires("admin")
async def import_post(request: web.Request) -> web.StreamResponse:
    context = ctx(request)
    form = await request.post()
    try:
        csv_text, filename, pasted = _upload(form)
    except InvalidInput as exc:
        await refused(request, "web:device:refused", exc, action="import")
        return _import_page(request, pasted=text(form, "csv"), error=exc.message, code=400)
    try:
        async with context.sessions() as db:
            result = await csvimport.import_devices(
                db, context.audit, actor(request), context.vault, csv_text, now=context.clock()
            )
    except InvalidInput as exc:  # audited by import_devices
        count = len(exc.errors)
        if count:
            where = f"the file {filename}" if filename else "the pasted text"
            rows = "problem" if count == 1 else "problems"
            message = f"Nothing was imported: {where} has {count} {rows}. Fix and import again."
        else:
            message = exc.message
        return _import_page(
            request,
            pasted=pasted,
            filename=filename,
            error=message,
            problems=exc.errors,
            code=400,
        )
    except PolicyError as exc:
        return _import_page(request, pasted=pasted, error=exc.message, code=status(exc))
    flash(
        request,
        f"Import done: {result.created} created, {result.updated} updated, "
        f"{result.unchanged} unchanged.",
        "success",
    )
    return redirect("/admin/devices")


@requires("admin")
async def import_sample(request: web.Request) -> web.StreamResponse:
    """An empty CMMS import file: the header row, every column the import knows."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([*csvimport.REQUIRED, *csvimport.OPTIONAL])
    return web.Response(
        body=out.getvalue().encode(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{SAMPLE_NAME}"'},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/devices/import", import_get)
    app.router.add_post("/admin/devices/import", import_post)
    app.router.add_get("/admin/devices/import.csv", import_sample)
