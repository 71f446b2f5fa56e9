"""The tars-dev Slack page in headless Chromium: a visitor picks an approver, clicks
Approve, and sees the message update in place (no reload), the requester's DM in the
DM pane, and a reminder in the thread of a request left pending.

Run by scripts/test-ui.sh against a live tars-dev; BASE and SLACK name its ports."""

import json
import os
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["BASE"]
SLACK = os.environ["SLACK"]
USER_TOKEN = "dev-user-token"


def submit(tenant):
    req = urllib.request.Request(
        f"{BASE}/requests/",
        data=json.dumps({"tenant_name": tenant, "permission": "read_only"}).encode(),
        headers={"Authorization": f"Bearer {USER_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202, r.status
        return json.load(r)["request_id"]


def status(request_id):
    req = urllib.request.Request(
        f"{BASE}/requests/{request_id}", headers={"Authorization": f"Bearer {USER_TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["status"]


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=["--no-sandbox"],
        )
        page = browser.new_page()
        page.goto(SLACK)
        # A marker that a full-page reload would wipe.
        page.evaluate("window.__stayed = true")
        approved_id = submit("uidemo")
        msg = page.locator(".msg", has_text=approved_id)
        expect(msg.get_by_role("button", name="Approve")).to_be_visible(timeout=20_000)
        # The approver is picked from the configured ones, not typed in.
        options = page.locator("#as option").all_inner_texts()
        assert any("carol" in o for o in options), options
        page.select_option("#as", label="carol (approver, U_CAROL)")
        msg.get_by_role("button", name="Approve").click()
        expect(msg).to_contain_text("Approved by carol", timeout=20_000)
        expect(msg).to_contain_text("access granted", timeout=20_000)
        # mrkdwn is rendered: bold labels, code spans.
        assert msg.locator("b", has_text="Requester:").count() == 1
        assert msg.locator("code", has_text=approved_id).count() >= 1
        # The requester's DM shows in her pane.
        dm = page.locator(".dm[data-user=U_ALICE]")
        expect(dm).to_contain_text("is granted", timeout=20_000)
        assert status(approved_id) == "applied"

        # A request nobody decides gets a reminder in its thread (REMINDER_INTERVAL is
        # short for this run).
        waiting_id = submit("uiwaiting")
        waiting = page.locator(".msg", has_text=waiting_id)
        expect(waiting.locator(".thread")).to_contain_text("Reminder 1", timeout=30_000)
        # A guest's click changes nothing.
        page.select_option("#as", label="guest (not an approver)")
        waiting.get_by_role("button", name="Approve").click()
        assert status(waiting_id) == "pending"

        assert page.evaluate("window.__stayed === true"), "the page reloaded"
        browser.close()
    print("ui: the tars-dev page works in headless Chromium")


if __name__ == "__main__":
    sys.exit(main())
