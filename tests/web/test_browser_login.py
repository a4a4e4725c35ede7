"""A staff member signs in with password and TOTP code in headless Chromium."""

from __future__ import annotations

from playwright.async_api import Browser

from tests.web.conftest import MakeStaff, WebApp


async def test_staff_signs_in_in_a_real_browser(
    web_app: WebApp, browser: Browser, make_staff: MakeStaff
) -> None:
    _user, password, secret = await make_staff("bea", ["biomed"], display_name="Bea Biomed")
    context = await browser.new_context()
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        await page.goto(f"{web_app.url}/account")
        assert page.url.startswith(f"{web_app.url}/login?next=")  # sent to sign in first
        await page.get_by_label("Hospital staff").check()
        await page.get_by_label("Login").fill("bea")
        await page.get_by_label("Password").fill(password)
        await page.get_by_label("Verification code").fill(web_app.code(secret))
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{web_app.url}/account")
        assert await page.get_by_role("heading", name="Your account").is_visible()
        await page.get_by_role("link", name="sallyport").click()
        await page.wait_for_url(f"{web_app.url}/")
        assert await page.get_by_role("heading", name="Welcome, Bea Biomed").is_visible()
        # the stylesheet loaded under the CSP (a blocked one would leave the header unstyled)
        background = await page.locator("header.top").evaluate(
            "e => getComputedStyle(e).backgroundColor"
        )
        assert background == "rgb(13, 37, 56)"
        cookies = {c["name"]: c for c in await context.cookies()}
        assert cookies["sallyport_session"]["httpOnly"] is True
        assert cookies["sallyport_session"]["sameSite"] == "Lax"
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(f"{web_app.url}/login?signed_out=1")
        assert await page.get_by_text("You have signed out.").is_visible()
        assert problems == []
    finally:
        await context.close()
