"""The endpoints the page needs (dataset gallery and images, the page itself), against the same server:
clear 4xx messages for bad input, never a 500."""

from __future__ import annotations

import io

from PIL import Image


def test_page_and_static_files(server):
    http = server.http
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("app.js", "style.css"):
        assert http.get(f"/static/{name}").status_code == 200
    for bad in ("nothing.js", "..%2f__init__.py", "%2e%2e/api/main.py"):
        assert http.get(f"/static/{bad}").status_code == 404
    assert http.get("/docs").status_code == 200  # the API stays where it is


def test_dataset_listing_gallery_and_png(server):
    http = server.http
    info = {d["name"]: d for d in http.get("/datasets").json()}
    assert info["fashion-mnist"]["available"] and info["fashion-mnist"]["classes"][9] == "Boot"
    g = http.get("/datasets/fashion-mnist/test", params={"offset": 9998, "limit": 5}).json()
    assert g["total"] == 10000 and [i["index"] for i in g["items"]] == [9998, 9999]
    first = http.get("/datasets/fashion-mnist/test", params={"limit": 3}).json()["items"]
    assert [(i["label"], i["class_name"]) for i in first] == [(9, "Boot"), (2, "Pullover"), (1, "Trouser")]
    r = http.get(first[0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-label"] == "9"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (28, 28) and im.mode == "L"
    assert http.get("/datasets/fashion-mnist/validation/4999.png").status_code == 200


def test_dataset_bad_input_is_a_clear_4xx(server):
    http = server.http
    cases = {"/datasets/fashion-mnist/test/10000.png": (404, "out of range: fashion-mnist test has 10000 images"),
             "/datasets/fashion-mnist/validation/5000.png": (404, "out of range"),
             "/datasets/fashion-mnist/bogus/0.png": (422, "split"),
             "/datasets/fashion-mnist/train/0.png": (422, "split"),
             "/datasets/fashion-mnist/test/abc.png": (422, "index"),
             "/datasets/fashion-mnist/test/-1.png": (422, "index"),
             "/datasets/cifar/test/0.png": (422, "name"),
             "/datasets/mnist/test/0.png": (404, "not in the data dir"),  # never downloaded from a request
             "/datasets/fashion-mnist/test?limit=0": (422, "limit"),
             "/datasets/fashion-mnist/bogus": (422, "split")}
    for url, (status, text) in cases.items():
        r = http.get(url)
        assert r.status_code == status and text in r.json()["detail"], (url, r.status_code, r.text)
    for url in ("/jobs/" + "0" * 32 + "/report/report.html", "/jobs/nope/report/report.html"):
        r = http.get(url)
        assert r.status_code == 404 and "no finished study" in r.json()["detail"]
