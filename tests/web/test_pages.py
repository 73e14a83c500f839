"""Pages as a person uses them, through plain HTTP: login, console, registry browser, resident H5."""

from __future__ import annotations


def _login(client, username, password, **extra):
    return client.post("/login", data={"username": username, "password": password, **extra}, follow_redirects=False)


def test_console_needs_login_and_shows_the_region(client, seeded):
    r = client.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    bad = _login(client, "admin", "wrong-password")
    assert bad.status_code == 401 and "wrong username or password" in bad.text
    ok = _login(client, "admin", "smartcare-admin", next="/admin")
    assert ok.status_code == 303 and ok.headers["location"] == "/admin"
    page = client.get("/admin").text
    assert 'id="count-districts">38<' in page
    assert 'id="count-hospitals">244<' in page
    assert 'id="count-institutions">1,141<' in page
    assert f'id="count-residents">{seeded.counts["residents"]:,}<' in page
    assert "echarts.min.js" in page


def test_login_refuses_open_redirects(client, seeded):
    r = _login(client, "admin", "smartcare-admin", next="https://evil.example/")
    assert r.headers["location"] == "/admin"
    r = _login(client, "admin", "smartcare-admin", next="//evil.example/")
    assert r.headers["location"] == "/admin"


def test_registry_browser_filters(client, seeded):
    _login(client, "admin", "smartcare-admin")
    assert "医疗卫生机构" in client.get("/admin/registry").text
    all_rows = client.get("/admin/registry/facilities").text
    assert "共 1141 家" in all_rows
    tertiary = client.get("/admin/registry/facilities", params={"level": "3", "kind": "general_hospital"}).text
    assert "三级" in tertiary and "社区卫生服务中心" not in tertiary
    chengkou = client.get("/admin/registry/facilities", params={"district_code": "500229"}).text
    assert "城口县" in chengkou and "渝中区" not in chengkou


def test_terminology_pages(client, seeded):
    _login(client, "admin", "smartcare-admin")
    assert "生理性别" in client.get("/admin/terminology").text
    assert "出院小结" in client.get("/admin/terminology/wst500-document-type").text


def test_resident_h5(client, seeded):
    r = client.get("/h5", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/h5/login")
    _login(client, "resident", "smartcare-demo", mobile="true", next="/h5")
    page = client.get("/h5").text
    assert "我的电子健康卡" in page and 'name="viewport"' in page


def test_console_actions_need_the_console_page(client, seeded):
    """A cross-site form cannot set HX-Request: console POSTs without it are refused (CSRF)."""
    _login(client, "admin", "smartcare-admin")
    forged = client.post("/admin/exchange/dead-letters/rerun")
    assert forged.status_code == 403
    real = client.post("/admin/exchange/dead-letters/rerun", headers={"HX-Request": "true"})
    assert real.status_code == 200 and "重新投递" in real.text


def test_exchange_console_pages_render(client, seeded):
    _login(client, "admin", "smartcare-admin")
    for path in ("/admin/exchange", "/admin/exchange/messages", "/admin/exchange/dead-letters",
                 "/admin/exchange/channels", "/admin/exchange/channels/hl7v2"):
        r = client.get(path)
        assert r.status_code == 200, path
    assert "版本历史" in client.get("/admin/exchange/channels/hl7v2").text
