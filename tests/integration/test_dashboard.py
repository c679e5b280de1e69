"""The live dashboard on real stage processes: a 3-stage tiny-gpt2 pipeline behind `serve-http`
opened in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium), and the
dashboard of `pipeedge-coord serve`'s control plane through a re-plan.

Counters on the page are checked against the stages' own Status answers; the screenshot goes to
$PIPEEDGE_DASHBOARD_PNG when set (docs/dashboard.png, shown in docs/operations.md, is made that way).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeedge.apps.dashboard import Dashboard, PlaneSource
from pipeedge.apps.dashboard import make_app as dashboard_app
from pipeedge.apps.openai_http import load_services, make_app, running
from pipeedge.coordinator import deploy as deploy_mod
from pipeedge.coordinator import planning
from pipeedge.coordinator.control_plane import ControlPlane
from pipeedge.coordinator.hosts import load_deployment
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl

GPT = "pipeedge/tiny-gpt2"
PARTITION = "1,4,5,8,9,12"
TOKEN = "dashboard-test-token"


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {value}")


def _deploy(cluster) -> Path:
    dep = load_deployment(cluster.hosts_file(GPT, partition=PARTITION))
    pipeline = deploy_mod.deploy(dep, planning.plan(dep).stages, progress=False)
    return pipeline.save(cluster.workdir / "pipeline.json")


def _browser():
    """Headless Chromium from Debian's packages, or a skip naming the install."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("no system Chromium: `make browser` (apt-get install chromium "
                    "chromium-driver) installs it")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1360,860", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(chromedriver))


def _page_stages(driver) -> dict[str, dict]:
    """What the page shows per stage card: state and every label -> value."""
    return driver.execute_script("""
        const out = {};
        for (const card of document.querySelectorAll('.stage')) {
          const kv = {};
          const dts = card.querySelectorAll('dt'), dds = card.querySelectorAll('dd');
          dts.forEach((dt, i) => { kv[dt.textContent] = dds[i].textContent; });
          out[card.dataset.stage] = {state: card.dataset.state, kv: kv,
                                     bottleneck: card.classList.contains('bottleneck')};
        }
        return out;""")


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _load(url: str, stop: threading.Event) -> None:
    """Completions back to back until `stop`."""
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while not stop.is_set():
            try:
                client.post(url + "/v1/completions",
                            json={"prompt": "Edge devices", "max_tokens": 24, "n": 4})
            except httpx.HTTPError:
                time.sleep(0.1)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """3 stage processes holding tiny-gpt2 (the browser test, last, kills stage1)."""
    with LocalCluster(3, threads=1, workdir=tmp_path_factory.mktemp("dashboard")) as cluster:
        yield cluster, _deploy(cluster)


def test_state_json_needs_the_token(deployed):
    cluster, pipeline_file = deployed
    app = make_app([], token=TOKEN, dashboard=Dashboard.of_files([pipeline_file]))
    with running(app) as url:
        page = httpx.get(url + "/dashboard")  # the page holds no data: served to anyone
        assert page.status_code == 200 and "default-src 'self'" in \
            page.headers["content-security-policy"]
        refused = httpx.get(url + "/dashboard/state.json")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        state = httpx.get(url + "/dashboard/state.json",
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()
        stages = state["pipelines"][0]["stages"]
        assert [(s["name"], s["layers"]) for s in stages] == [
            ("stage0", "1-4"), ("stage1", "5-8"), ("stage2", "9-12")]
        assert [s["encoding"] for s in stages] == ["raw", "raw", "-"]
        for s, stage in zip(stages, cluster.stages):
            ctl = StageControl(s["name"], stage.address)
            try:
                assert s["parameter_bytes"] == ctl.status().parameter_bytes > 0
            finally:
                ctl.close()


def test_dashboard_in_a_browser(deployed, tmp_path):
    cluster, pipeline_file = deployed
    app = make_app(load_services([pipeline_file]), token=TOKEN,
                   dashboard=Dashboard.of_files([pipeline_file]))
    driver = _browser()
    stop = threading.Event()
    load = None
    try:
        with running(app) as url:
            assert httpx.get(url + "/").headers["location"] == "/dashboard"
            driver.get(url + "/#token=" + TOKEN)  # the redirect keeps the fragment
            _wait(lambda: driver.current_url.endswith("/dashboard"), 10,
                  "the token taken out of the address bar")
            _wait(lambda: len(_page_stages(driver)) == 3, what="three stage cards")
            shown = _page_stages(driver)
            assert list(shown) == [s.name for s in cluster.stages]
            assert [v["kv"]["layers"] for v in shown.values()] == ["1-4", "5-8", "9-12"]
            assert all(v["state"] == "up" and v["kv"]["items"] == "0" for v in shown.values())
            assert driver.find_element("css selector", "section.pipeline h2").text.startswith(GPT)

            # Load starts: every stage's counters and rates move on the page.
            load = threading.Thread(target=_load, args=(url, stop), daemon=True)
            load.start()

            rated = set()  # stages whose items/s was above 0 at some poll

            def moving():
                s = _page_stages(driver)
                rated.update(k for k, v in s.items() if v["kv"]["items/s"] not in ("–", "0.0"))
                return s if len(rated) == 3 and all(int(v["kv"]["items"]) > 0
                                                    for v in s.values()) else None
            shown = _wait(moving, 60, "items and rates on every stage")
            for stage, (name, v) in zip(cluster.stages, shown.items()):
                ctl = StageControl(name, stage.address)
                try:  # the page never shows more than the stage itself has counted
                    assert 0 < int(v["kv"]["items"]) <= ctl.status().items_processed
                finally:
                    ctl.close()
            _wait(lambda: sum(v["bottleneck"] for v in _page_stages(driver).values()) == 1,
                  30, "one stage marked as the bottleneck")
            time.sleep(8)  # a few points on the throughput chart
            png = tmp_path / "dashboard.png"
            assert driver.save_screenshot(str(png))
            if os.environ.get("PIPEEDGE_DASHBOARD_PNG"):
                shutil.copyfile(png, os.environ["PIPEEDGE_DASHBOARD_PNG"])
            assert _console_errors(driver) == []

            # A stage dies (load stopped first: a request caught by the kill would wait out the
            # recovery timeout for a re-plan that no coordinator makes here).
            stop.set()
            load.join(60)
            cluster.kill(1)
            _wait(lambda: _page_stages(driver)["stage1"]["state"] == "DOWN", 30,
                  "stage1 shown as down")  # its card says so, the event list names it
            events = driver.find_element("css selector", ".events").text
            assert "stage stage1" in events and "does not answer" in events, events
            others = _page_stages(driver)
            assert others["stage0"]["state"] == others["stage2"]["state"] == "up"
            assert _console_errors(driver) == []
    finally:
        stop.set()
        if load is not None:
            load.join(60)
        driver.quit()


def test_control_plane_dashboard_shows_a_replan(cluster_factory):
    """`pipeedge-coord serve --dashboard-port`: a killed host becomes a down host and a re-plan
    event, and the chain shrinks to the stages the coordinator re-planned onto."""
    cluster = cluster_factory(3)
    dep = load_deployment(cluster.hosts_file(GPT, partition=PARTITION))
    plane = ControlPlane(dep, pipeline_path=cluster.workdir / "pipeline.json",
                         check_interval_s=0.2, check_timeout_s=0.5)
    plane.deploy()
    plane.start_watching()
    try:
        with running(dashboard_app(Dashboard([PlaneSource(plane)]), token=None)) as url:
            def state():
                return httpx.get(url + "/dashboard/state.json").json()["pipelines"][0]
            first = state()
            assert len(first["stages"]) == 3 and first["down"] == []
            cluster.kill(2)
            after = _wait(lambda: (lambda s: s if s["version"] > first["version"] else None)(
                state()), 60, "a re-plan")
            assert after["down"] == ["stage2"]
            assert [s["name"] for s in after["stages"]] == ["stage0", "stage1"]
            kinds = [e["kind"] for e in after["events"]]
            assert "replan" in kinds and "down" in kinds, after["events"]
    finally:
        plane.stop()
