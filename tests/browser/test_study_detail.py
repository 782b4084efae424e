"""A finished study in the Jobs tab: its answer, tables and figures on the page (not only as a download). The
job record is written straight into the test service's job store (the embedded SQLite one under the data dir),
with a small report folder beside it, as the study task leaves them (worker/tasks.py: study)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from tests.browser.conftest import new_page
from worker.jobs import SqlJobStore

ANSWER = {"question": "Are generative classifiers more robust to adversarial attacks than discriminative ones?",
          "answer": "Yes, on our numbers: fmnist-gfz keeps a higher robust accuracy than fmnist-dfz (under fgsm).",
          "strength": "moderate evidence", "differences": "Our fmnist-dfz reaches 0.9 test accuracy.",
          "limits": "One trained model per structure."}
TABLES = {"table1": {
    "title": "Table 1: accuracy (K = 10)", "columns": ["model", "structure", "test accuracy [95% CI]"],
    "rows": [["fmnist-gfz", "GFZ", "0.8500 [0.8430, 0.8568] (n 10000)"],
             ["fmnist-dfz", "DFZ", "0.9000 [0.8940, 0.9057] (n 10000)"]],
    "comparison_columns": ["comparison", "difference (fmnist-gfz − fmnist-dfz) [95% CI]", "n", "p", "p (Holm)",
                           "verdict"],
    "comparisons": [["accuracy", "-0.050 [-0.058, -0.042]", "10000", "< 0.001", "< 0.001", "holds"]],
    "verdict": "fmnist-gfz − fmnist-dfz: holds in 1, reversed in 0 of 1 comparisons."}}
FIGURES = [{"question": "robust accuracy against the L-infinity budget", "file": "figures/curve-robust-linf.png"},
           {"model": "fmnist-gfz", "attack": "fgsm", "file": "figures/roc-fmnist-gfz-fgsm.png"}]


def _finished_study(data: Path) -> str:
    """A succeeded study job in the service's job store, its output folder under <data>/studies/<job id>."""
    store = SqlJobStore(f"sqlite:///{(data / 'service' / 'results.sqlite').resolve()}", expires=10**9)
    try:
        job = store.create("study", {"models": ["fmnist-gfz", "fmnist-dfz"], "attacks": ["fgsm"], "limit": 10})
        out = data / "studies" / job.id
        (out / "figures").mkdir(parents=True)
        for i, f in enumerate(FIGURES):
            im = Image.new("RGB", (60 + 10 * i, 40), "white")
            ImageDraw.Draw(im).line([(5, 35), (55, 5)], fill="navy", width=2)
            im.save(out / f["file"])
        (out / "results.json").write_text(json.dumps({"figures": FIGURES, "examples": {}, "tables": TABLES,
                                                      "answer": ANSWER}))
        (out / "report.html").write_text("<!doctype html><title>report</title><p>report</p>")
        (out / "report.md").write_text("# report\n")
        assert store.update(job.id, state="succeeded", done=1.0, result={
            "out": str(out), "seconds": 12.3, "answer": ANSWER, "tables": TABLES})
        return job.id
    finally:
        store.engine.dispose()


def test_finished_study_shows_answer_tables_and_figures(browser, server, shots):
    job_id = _finished_study(Path(server.env["GENROBUST_DATA_DIR"]))
    assert server.http.get(f"/jobs/{job_id}/report/figures/curve-robust-linf.png").status_code == 200
    page, errors = new_page(browser, server.url)
    page.click("#tab-jobs")
    row = page.locator(f"#jobs-table tr[data-job='{job_id}']")
    assert row.locator(".state-succeeded").inner_text() == "succeeded"
    row.get_by_role("button", name="Details").click()
    detail = page.locator("#job-detail")
    detail.locator(".study-answer").wait_for()
    assert detail.locator("h3").inner_text() == f"Job {job_id[:8]} (study): succeeded"
    assert detail.locator(".study-answer").inner_text() == ANSWER["answer"]
    answer = detail.locator(".answer")
    assert "Answer (moderate evidence)." in answer.inner_text() and ANSWER["question"] in answer.inner_text()

    tables = detail.locator("table.study")
    assert tables.count() == 2  # the table and its paired comparisons
    t1 = tables.nth(0)
    assert t1.locator("caption").inner_text() == TABLES["table1"]["title"]
    assert t1.locator("th").all_inner_texts() == TABLES["table1"]["columns"]
    cells = t1.locator("tbody tr").evaluate_all("rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    assert cells == TABLES["table1"]["rows"]
    assert tables.nth(1).locator("tbody td").all_inner_texts() == TABLES["table1"]["comparisons"][0]
    assert detail.locator(".verdict").inner_text() == f"Verdict. {TABLES['table1']['verdict']}"

    images = detail.locator(".figures img")
    images.nth(1).wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#job-detail .figures img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert images.evaluate_all("im => im.map(i => [i.getAttribute('src'), i.naturalWidth, i.alt])") == [
        [f"/jobs/{job_id}/report/figures/curve-robust-linf.png", 60,
         "Figure 1: Robust accuracy against the L-infinity budget"],
        [f"/jobs/{job_id}/report/figures/roc-fmnist-gfz-fgsm.png", 70, "Figure 2: ROC, fmnist-gfz — fgsm"]]
    assert detail.locator("figcaption").all_inner_texts() == ["Figure 1: Robust accuracy against the L-infinity "
                                                              "budget", "Figure 2: ROC, fmnist-gfz — fgsm"]
    links = detail.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert links == [f"/jobs/{job_id}/report/{f}" for f in ("report.html", "report.md", "results.json")]
    page.screenshot(path=shots / "6b-study-on-the-page.png", full_page=True)
    page.set_viewport_size({"width": 400, "height": 800})  # wide tables scroll inside their box
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    assert errors == [], errors
    page.context.close()
