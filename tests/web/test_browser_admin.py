"""An admin imports devices from a CMMS export through the upload form, in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from policy import admin
from tests.web.conftest import MakeStaff, WebApp

EXPORT = (
    "name,segment,address,criticality,manufacturer,model,firmware,location,asset_tag,services\n"
    "pump-21,icu,10.20.0.21,high,Infusia,Alaris 8015,12.1.2,ICU bed 1,BME-021,ssh:22;https:443\n"
    "vent-22,icu,10.20.0.22,life-sustaining,Breathe,V60,3.4,ICU bed 2,BME-022,ssh:22\n"
)


async def test_an_admin_imports_a_csv_file_and_sees_the_devices(
    web_app: WebApp,
    browser: Browser,
    make_staff: MakeStaff,
    db: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    async with db() as s:
        await admin.add_segment(s, "icu")
    _user, password, secret = await make_staff("alice", ["admin"], display_name="Alice Admin")
    export = tmp_path / "cmms-export.csv"
    export.write_text(EXPORT)
    context = await browser.new_context()
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        await page.goto(f"{web_app.url}/login")
        await page.get_by_label("Login").fill("alice")
        await page.get_by_label("Password").fill(password)
        await page.get_by_label("Verification code").fill(web_app.code(secret))
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{web_app.url}/")

        await page.get_by_role("link", name="Devices").first.click()
        await page.wait_for_url(f"{web_app.url}/admin/devices")
        assert await page.get_by_text("No devices yet.").is_visible()
        await page.get_by_role("link", name="Import from a CSV file").click()
        await page.wait_for_url(f"{web_app.url}/admin/devices/import")
        await page.get_by_label("CSV file (UTF-8)").set_input_files(str(export))
        await page.get_by_role("button", name="Import").click()

        await page.wait_for_url(f"{web_app.url}/admin/devices")
        status = page.get_by_role("status")
        assert await status.inner_text() == "Import done: 2 created, 0 updated, 0 unchanged."
        rows = page.locator("table tbody tr")
        assert await rows.count() == 2
        first = await rows.nth(0).locator("td").all_inner_texts()
        assert first[:6] == [
            "pump-21",
            "icu",
            "high",
            "ICU bed 1",
            "10.20.0.21",
            "https:443, ssh:22",
        ]
        assert (await rows.nth(1).locator("td").all_inner_texts())[0] == "vent-22"
        await page.screenshot(path=str(tmp_path / "admin-devices.png"), full_page=True)
        assert problems == []
    finally:
        await context.close()
