"""A small real Hugging Face hub for the quickstart's download (gateway/quickstart/download.py): the file routes
huggingface_hub uses, shaped as huggingface.co answers them for an LFS file.

Run: python -m tests.doubles.hf_hub --port P --root DIR   (serves DIR/<owner>/<repo>/<filename>)

- HEAD/GET /<owner>/<repo>/resolve/<revision>/<filename>: 302 to the "CDN" (an absolute URL, which
  huggingface_hub does not follow for metadata) with X-Repo-Commit, X-Linked-Etag (the sha256, quoted),
  X-Linked-Size, as the hub does for LFS files (huggingface_hub file_download.get_hf_file_metadata reads them);
  404 with X-Error-Code: EntryNotFound for a missing file.
- GET /cdn/<owner>/<repo>/<filename>: the bytes, honouring `Range: bytes=N-` (206), as the CDN does.
Test hooks: POST /_mode?corrupt=1 (the CDN flips one byte: same size, another sha256), ?drop=N (every CDN
answer stops after N bytes of body, the connection closed), ?size=N (X-Linked-Size says N); POST /_mode
alone restores all; GET /_ranges (the Range header of every CDN request, "" when none)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


async def resolve(request: web.Request) -> web.StreamResponse:
    root: Path = request.app["root"]
    owner, repo, filename = request.match_info["owner"], request.match_info["repo"], request.match_info["filename"]
    path = root / owner / repo / filename
    if not path.is_file():
        return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound",
                                                 "X-Error-Message": "Entry not found"}, text="Entry not found")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    size = request.app["mode"].get("size") or len(data)
    cdn = f"http://{request.host}/cdn/{owner}/{repo}/{filename}"
    return web.Response(status=302, headers={"Location": cdn, "X-Repo-Commit": COMMIT,
                                             "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size),
                                             "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})


async def cdn(request: web.Request) -> web.StreamResponse:
    root: Path = request.app["root"]
    mode = request.app["mode"]
    request.app["ranges"].append(request.headers.get("Range", ""))
    data = bytearray((root / request.match_info["path"]).read_bytes())
    if mode.get("corrupt"):
        data[len(data) // 2] ^= 0xFF
    start = 0
    rng = request.headers.get("Range", "")
    if rng.startswith("bytes=") and rng.endswith("-"):
        start = int(rng[6:-1])
    body = bytes(data[start:])
    resp = web.StreamResponse(status=206 if start else 200, headers={
        "Content-Length": str(len(body)), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
        **({"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {})})
    await resp.prepare(request)
    drop = mode.get("drop")
    if drop:
        await resp.write(body[:drop])
        request.transport.close()  # a connection lost mid-file
        return resp
    await resp.write(body)
    return resp


async def set_mode(request: web.Request) -> web.Response:
    mode = request.app["mode"]  # the same dict, changed in place (an app's state is set before it starts)
    mode.clear()
    mode.update({k: int(v) for k, v in request.query.items()})
    return web.json_response(request.app["mode"])


async def ranges(request: web.Request) -> web.Response:
    return web.json_response(request.app["ranges"])


def make_app(root: Path) -> web.Application:
    app = web.Application()
    app["root"], app["mode"], app["ranges"] = root, {}, []
    app.router.add_route("*", "/{owner}/{repo}/resolve/{revision}/{filename}", resolve)
    app.router.add_get("/cdn/{path:.+}", cdn)
    app.router.add_post("/_mode", set_mode)
    app.router.add_get("/_ranges", ranges)
    app.router.add_get("/_health", lambda r: web.Response(text="ok"))
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    a = p.parse_args()
    print(f"hf hub double on {a.port}", flush=True)
    web.run_app(make_app(Path(a.root)), host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
