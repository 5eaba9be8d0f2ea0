"""What the browser test needs around the session's Prefect server: the Prefect UI served for it,
the release deployment served by `shipyard serve` with the sandbox environment, and the UI's
custom run form filled in as a person does.

Why a UI process beside the server: `prefect_test_harness` runs its server ephemeral, with the
UI switched off (`PREFECT_UI_ENABLED=0`, Prefect's SubprocessASGIServer). The UI is a bundle of
static files plus `/ui-settings`, which tells the browser where the API is; Prefect's own
`create_ui_app` serves both on another port, with `PREFECT_UI_API_URL` at the session server's
API — the setup of a UI behind another host name or port (README: "Manual runs"). Every request
the pages make goes to the session's real server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from sandbox.procs import free_port, spawn, wait_for_port
from shipyard.deployments.serve import PREFECT_YAML

# Prefect's UI app alone (the static bundle and /ui-settings), under uvicorn.
UI_APP = (
    "import sys, uvicorn;"
    "from prefect.server.api.server import create_ui_app;"
    "uvicorn.run(create_ui_app(ephemeral=False), host='127.0.0.1', port=int(sys.argv[1]),"
    " log_level='warning')"
)


def start_ui(api_url: str, log: Path) -> tuple[Any, str]:
    """(process, base URL) of the Prefect UI talking to `api_url`; v2 is the UI that
    `prefect server start` opens by default in Prefect 3.8."""
    port = free_port()
    proc = spawn(
        [sys.executable, "-c", UI_APP, str(port)],
        log,
        env={
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_SERVER_UI_V2_ENABLED": "true",
        },
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ui(proc: Any, base_url: str, timeout: float = 180) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    wait_for_port("127.0.0.1", port, timeout, proc)
    settings = httpx.get(f"{base_url}/ui-settings", timeout=60).json()
    assert settings["v2_base_url"], f"the UI app serves no v2 bundle: {settings}"


def release_only_yaml(path: Path, name: str) -> Path:
    """prefect.yaml with the `release` deployment alone, under `name` and without its git-tag
    trigger: the session's other tests emit tag events and run `prefect deploy` of `release`;
    this served twin must neither receive their runs nor take over their deployment."""
    document = yaml.safe_load(PREFECT_YAML.read_text())
    entry = next(d for d in document["deployments"] if d["name"] == "release")
    entry = {k: v for k, v in entry.items() if k not in ("triggers", "work_pool")}
    document["deployments"] = [{**entry, "name": name}]
    document.pop("definitions", None)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_serving(prefect_file: Path, name: str, api_url: str, log: Path) -> Any:
    """`shipyard serve` of one deployment, in its own process, with this process's environment
    (the sandbox's endpoints) and a 1 s poll for scheduled runs."""
    shipyard = Path(sys.executable).with_name("shipyard")
    return spawn(
        [str(shipyard), "serve", "--prefect-file", str(prefect_file), "--name", name],
        log,
        env={
            "PREFECT_API_URL": api_url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
        },
    )


def stop_group(proc: Any, timeout: float = 10) -> None:
    """Stop a process started here with `spawn` (its own session) and whatever it started in
    that session (the runner's flow-run processes): SIGTERM, then SIGKILL after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_deployment(flow_and_name: str, proc: Any, log: Path, timeout: float = 180) -> Any:
    """The served deployment once `shipyard serve` registered it (polled, no fixed wait)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_deployment_by_name(flow_and_name)
            except ObjectNotFound:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"`shipyard serve` did not register {flow_and_name}: "
                    + log.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.5)


# ---------------------------------------------------------------- the pages (Prefect UI v2)

BY_TEXT = (
    "Array.from(document.querySelectorAll('button, a, [role=menuitem], [role=tab]'))"
    ".find(e => e.innerText.trim() === {text})"
)
# The block of the run form that holds one parameter: its label (the parameter's title, then
# "(Optional)"), up to the nearest container with an input or a type switch.
FIELD_BLOCK = (
    "(() => {{ const l = Array.from(document.querySelectorAll('label'))"
    ".find(e => e.innerText.trim().split(' ')[0] === {name});"
    " if (!l) return null; let c = l.parentElement;"
    " while (c && !c.querySelector('textarea, input[type=text], [role=tablist]'))"
    " c = c.parentElement; return c; }})()"
)


def by_text(text: str) -> str:
    return BY_TEXT.format(text=json.dumps(text))


def field_input(name: str) -> str:
    block = FIELD_BLOCK.format(name=json.dumps(name))
    return f"(() => {{ const c = {block}; return c && c.querySelector('textarea, input'); }})()"


def string_switch(name: str) -> str:
    """The `str` choice of a parameter typed as a union (e.g. `str | None`)."""
    block = FIELD_BLOCK.format(name=json.dumps(name))
    return (
        f"(() => {{ const c = {block}; return c && Array.from(c.querySelectorAll("
        "'button[role=tab]')).find(b => b.innerText.trim() === 'str'); })()"
    )


def fill(page: Any, name: str, text: str) -> None:
    """Type `text` into the parameter's text field, replacing what it holds; a union-typed
    parameter is switched to its `str` form first (a plain string field has no switch)."""
    if page.evaluate(f"!!{string_switch(name)} && !{field_input(name)}"):
        page.click(string_switch(name), what=f"the str switch of {name}")
    page.click(field_input(name), what=f"the {name} field")
    page.evaluate(f"{field_input(name)}.select()")
    page.type_text(text)
    page.wait_for(f"{field_input(name)}.value === {json.dumps(text)}", what=f"{name} = {text}")


def click_until_sent(
    page: Any, element: str, url_part: str, what: str, tries: int = 3, settle_s: float = 30.0
) -> None:
    """Click `element` until the page sends a POST whose URL holds `url_part` and it is answered
    with success (both seen in the browser's network log after the click): a click lost under
    load (see `submit_run_form`) is repeated, and so is one whose request failed (the test
    server's SQLite answers "database is locked" under load); one that succeeded is not."""
    page.send("Network.enable")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    answer: str | None = None
    for attempt in range(1, tries + 1):
        mark = len(page.events)
        page.click(element, what=f"{what} (click {attempt})")
        deadline = time.monotonic() + settle_s
        answer = None
        while time.monotonic() < deadline:
            page.evaluate("0")  # reads the events the browser sent meanwhile
            answer = post_answer(page.events[mark:], url_part)
            if answer == "ok":
                return
            if answer is not None and answer.startswith("failed"):
                break  # click again
            time.sleep(0.5)
    raise TimeoutError(f"{what}: no successful POST to {url_part} after {tries} clicks ({answer})")


def post_answer(events: list[dict[str, Any]], url_part: str) -> str | None:
    """What became of the last POST to `url_part` among `events`: None (none sent), "sent",
    "ok", or "failed: why"."""
    sent = [
        m["params"]["requestId"]
        for m in events
        if m.get("method") == "Network.requestWillBeSent"
        and url_part in m["params"]["request"]["url"]
        and "/filter" not in m["params"]["request"]["url"]  # Prefect's reads are POSTs too
        and m["params"]["request"].get("method") == "POST"
    ]
    if not sent:
        return None
    for m in events:
        params = m.get("params", {})
        if params.get("requestId") != sent[-1]:
            continue
        if m.get("method") == "Network.responseReceived":
            status = int(params["response"]["status"])
            return "ok" if status < 400 else f"failed: HTTP {status}"
        if m.get("method") == "Network.loadingFailed":
            return f"failed: {params.get('errorText')}"
    return "sent"


def _create_run_answer(events: list[dict[str, Any]]) -> str | None:
    """What became of the last create-run request among `events`: None (none sent), "sent"
    (no answer yet), "ok", or "failed: why" (an HTTP error or a network failure)."""
    return post_answer(events, "/create_flow_run")


def submit_run_form(
    page: Any, tries: int = 3, settle_s: float = 30.0, answer_s: float = 240.0
) -> None:
    """Click the form's Submit until the UI's create-run request
    (`POST /api/deployments/{id}/create_flow_run`), seen in the browser's own network log,
    is answered with success.

    Under load a click can be lost without a trace: the field that still has the focus blurs on
    mousedown, the form re-lays itself out, and the mouseup lands elsewhere, so no click event
    fires (seen in `make test-under-load`: the form still on screen 300 s later, no request).
    The focus is taken off first; a click is repeated only when no request left the page, or
    when the request failed (an HTTP error or a dropped connection from a loaded server: the
    UI then stays on the form), so a slow click is never sent twice. Only requests sent after
    this call count."""
    page.send("Network.enable")  # from here on, every request the page sends is logged
    page.evaluate("document.activeElement && document.activeElement.blur()")
    first = len(page.events)
    answers: list[str] = []
    for attempt in range(1, tries + 1):
        mark = len(page.events)
        page.click(by_text("Submit"), what=f"the form's Submit button (click {attempt})")
        deadline = time.monotonic() + settle_s
        answer = None
        while time.monotonic() < deadline or answer == "sent":
            page.evaluate("0")  # reads the events the browser sent meanwhile
            answer = _create_run_answer(page.events[mark:])
            if answer == "ok":
                return
            if answer and answer.startswith("failed"):
                break
            if answer == "sent" and time.monotonic() > deadline + answer_s:
                return  # sent, never answered here: the API is asked for the run next
            time.sleep(0.5)
        answers.append(answer or "no request")
    sent = _create_run_answer(page.events[first:])
    raise TimeoutError(
        f"the form's Submit created no run after {tries} clicks: {', '.join(answers)}"
        f" (last request: {sent})"
    )


RUN_LINK = "document.querySelector(\"a[href*='/runs/flow-run/']\")"
_RUN_ID = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


def wait_created_run(page: Any, deployment_id: Any, timeout: float = 300) -> str:
    """The id of the flow run the form's Submit created: the first of the API's runs of the
    deployment (each test serves its own) or a run link on the page. The UI lists a new run only
    when it refreshes the deployment's page, which a loaded machine can delay by minutes; the
    API has the run as soon as the UI created it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    only_ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(deployment_filter=only_ours, limit=5)
            if runs:
                return str(min(runs, key=lambda r: r.created or r.expected_start_time).id)
            href = page.evaluate(f"{RUN_LINK} && {RUN_LINK}.getAttribute('href')")
            found = _RUN_ID.search(href or "")
            if found:
                return found.group(1)
            if time.monotonic() > deadline:
                text = page.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(
                    f"no run of the deployment within {timeout:.0f} s after Submit (API and "
                    f"page); the page shows: {text[:1500]!r}"
                )
            time.sleep(0.5)


def wait_run_final(run_id: Any, timeout: float) -> str:
    """The name of the flow run's state once it is final (polled through the API)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                return str(state.name)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {run_id} not final within {timeout:.0f} s: {state and state.name}"
                )
            time.sleep(0.5)


def state_badge(name: str) -> str:
    """The run page's state badge showing `name`."""
    return (
        "Array.from(document.querySelectorAll('[data-slot=badge]'))"
        f".find(e => e.innerText.trim() === {json.dumps(name)})"
    )


# ---------------------------------------------------------------- day two (several deployments)


def served_yaml(path: Path, names: dict[str, str]) -> Path:
    """prefect.yaml with only the deployments named in `names` (prefect.yaml's name -> the name
    served here), without triggers or work pool: as `release_only_yaml`, for several."""
    document = yaml.safe_load(PREFECT_YAML.read_text())
    kept = []
    for entry in document["deployments"]:
        if entry["name"] in names:
            entry = {k: v for k, v in entry.items() if k not in ("triggers", "work_pool")}
            kept.append({**entry, "name": names[entry["name"]]})
    missing = sorted(set(names) - {e["name"] for e in document["deployments"]})
    assert not missing, f"prefect.yaml has no deployment {missing}"
    document["deployments"] = kept
    document.pop("definitions", None)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_serving_many(prefect_file: Path, names: list[str], api_url: str, log: Path) -> Any:
    """`shipyard serve` of several deployments of `prefect_file` from one process (as
    `start_serving`), INFO logs so that the log says how far a run got."""
    shipyard = Path(sys.executable).with_name("shipyard")
    flags = [part for name in names for part in ("--name", name)]
    return spawn(
        [str(shipyard), "serve", "--prefect-file", str(prefect_file), *flags],
        log,
        env={
            "PREFECT_API_URL": api_url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        },
    )


# The run page's "Open menu" button (its label is screen-reader text): Copy to new run, Cancel,
# Pause, Retry... (Prefect 3.8's UI v2, flow-run page).
RUN_MENU = (
    "Array.from(document.querySelectorAll('button'))"
    ".find(b => b.textContent.trim() === 'Open menu')"
)


def body_text_with(*parts: str) -> str:
    """A page expression: the page's text once it holds every one of `parts` (else null)."""
    checks = " && ".join(f"t.includes({json.dumps(p)})" for p in parts)
    return (
        "(() => { const t = document.body ? document.body.innerText : '';"
        f" return ({checks}) ? t : null; }})()"
    )
