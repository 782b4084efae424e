"""With GENROBUST_API_KEY set, the page asks for the key once (on the first 401: an attack that became a
job), then sends it with that attack, a sweep and its cancellation without asking again."""

from __future__ import annotations

import pytest

from tests.browser.conftest import KEY, new_page


@pytest.fixture(scope="module")
def keyed(servers):
    return servers.keyed


def test_asks_for_the_key_once_and_sends_it_with_jobs_and_cancel(browser, keyed, shots):
    page, errors = new_page(browser, keyed.url)
    page.wait_for_selector("#gallery button >> nth=0").click()
    page.wait_for_function("document.getElementById('current-caption').textContent.startsWith('test image 0')")
    page.click("#attack-run")  # over the inline work limit: a job, which needs the key
    dialog = page.locator("#key-dialog")
    dialog.wait_for()
    page.screenshot(path=shots / "k1-api-key.png")
    page.fill("#key-input", KEY)
    page.click("#key-dialog button[value=ok]")
    page.wait_for_selector("#attack-outcome", timeout=60_000)  # the job's progress, then its result
    assert page.locator("#attack-result canvas").count() == 3
    page.screenshot(path=shots / "k2-attack-job.png", full_page=True)

    page.click("#tab-jobs")
    page.fill("#sweep-limit", "1000")  # long enough to cancel while it runs
    page.click("#sweep-run")
    row = page.locator("#jobs-table tbody tr").filter(has_text="sweep").first
    row.wait_for()
    job = keyed.http.get(f"/jobs/{row.get_attribute('data-job')}").json()
    assert job["kind"] == "sweep" and job["request"]["limit"] == 1000
    row.get_by_role("button", name="Cancel").click()  # DELETE sends the stored key too
    row.locator(".state-cancelled").wait_for()
    assert not dialog.is_visible()  # asked once
    assert page.locator("#jobs-table tbody tr").filter(has_text="attack").locator(".state-succeeded").count() == 1
    page.screenshot(path=shots / "k3-cancelled.png", full_page=True)
    # Chromium logs the one 401 that made the page ask; nothing else
    assert len(errors) == 1 and "status of 401" in errors[0], errors
    page.context.close()
