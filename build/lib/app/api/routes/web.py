"""The web page (app/web/: plain HTML, CSS and JS shipped in the package) at ``/``, and a finished study's
report directory. The page only calls the public API; nothing here computes."""

from __future__ import annotations

from pathlib import Path as FsPath

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse, Response

from app.api.deps import JobsDep
from app.api.routes import errors
from app.api.routes.jobs import JOB_ID

WEB = FsPath(__file__).resolve().parents[2] / "web"
router = APIRouter()


def _inside(root: FsPath, relative: str) -> FsPath | None:
    """``root/relative`` if it is a file inside ``root`` (no '..', no absolute paths, no links out)."""
    root = root.resolve()
    target = (root / relative).resolve()
    return target if target.is_relative_to(root) and target.is_file() else None


@router.get("/", include_in_schema=False)
def page():
    return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
def favicon():  # no icon; an empty answer keeps browsers from logging a 404 on every page (report.html too)
    return Response(status_code=204)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str):
    path = _inside(WEB, name)
    if path is None:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get("/jobs/{job_id}/report/{path:path}", tags=["jobs"], response_class=FileResponse, responses={
    200: {"content": {"text/html": {}, "image/png": {}, "application/json": {}, "text/markdown": {}},
          "description": "A file of the study's output folder."}, **errors(404, 503)})
def study_report(jobs: JobsDep, job_id: str,
                 path: str = Path(description="A file in the study's folder: report.html, report.md, results.json, "
                                              "figures/<name>.png.")):
    """A file of a finished study's output (report.html and the figures it links to, report.md, results.json).
    404 for unknown or unfinished jobs, jobs that are not studies, and paths outside the study's folder."""
    record = jobs.get(job_id) if JOB_ID.match(job_id) else None
    if record is None or record.kind != "study" or record.state != "succeeded" or not record.result:
        raise HTTPException(404, f"no finished study with job id {job_id!r}")
    target = _inside(FsPath(record.result["out"]), path or "report.html")
    if target is None:
        raise HTTPException(404, f"study {job_id} has no file {path!r} (on this host)")
    return FileResponse(target)
