#!/usr/bin/env python3
"""Loads the demo page in headless Chromium (through ChromeDriver's WebDriver
protocol, standard library only), waits for its report, and checks the
numbers it prints: a finite loss, a gradient within the tolerance of the f64
reference, positive GB/s for the kernel and the copy kernel.

    python3 examples/web/check_page.py [ROWSxCOLS ...]

Prints one JSON report per shape. Exit status 1 on any failure.
"""
import contextlib
import functools
import http.server
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CHROMIUM = "/usr/lib/chromium/chromium"
# The largest entry of a row's `mean` gradient is its target's, about -1/N;
# the page must match the reference to 0.1% of that (it does to ~1e-10 of
# an absolute error; the crate's own tests apply the full tolerance rule).
RELATIVE_ERROR_LIMIT = 1e-3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"{}").get("value")


@contextlib.contextmanager
def static_server():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=HERE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@contextlib.contextmanager
def chromedriver():
    port = free_port()
    proc = subprocess.Popen(["chromedriver", f"--port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_page(driver, page_port, rows, cols):
    session = call(driver, "POST", "/session", {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["headless", "no-sandbox", "disable-dev-shm-usage", "enable-unsafe-webgpu"],
        },
    }}})["sessionId"]
    try:
        call(driver, "POST", f"/session/{session}/url",
             {"url": f"http://127.0.0.1:{page_port}/index.html?rows={rows}&cols={cols}&run=1"})
        deadline = time.time() + 600
        while time.time() < deadline:
            state = call(driver, "POST", f"/session/{session}/execute/sync", {
                "script": "const r = document.getElementById('result');"
                          "return [r.dataset.state || '', r.dataset.report || '', r.textContent];",
                "args": []})
            if state[0] in ("done", "error"):
                return state
            time.sleep(0.5)
        return ["timeout", "", ""]
    finally:
        call(driver, "DELETE", f"/session/{session}")


def main():
    shapes = [tuple(int(v) for v in a.split("x")) for a in sys.argv[1:]] or [(300, 1001)]
    failures = 0
    with static_server() as page_port, chromedriver() as driver:
        for rows, cols in shapes:
            state, report, text = run_page(driver, page_port, rows, cols)
            if state != "done":
                print(f"{rows}x{cols}: page {state}: {text}")
                failures += 1
                continue
            r = json.loads(report)
            print(json.dumps(r))
            problems = []
            if not math.isfinite(r["loss"]) or r["loss"] <= 0:
                problems.append(f"loss {r['loss']}")
            if not r["max_grad_error"] <= RELATIVE_ERROR_LIMIT / rows:
                problems.append(f"max grad error {r['max_grad_error']}")
            for key in ("kernel_gbps", "copy_gbps"):
                if not r[key] > 0:
                    problems.append(f"{key} {r[key]}")
            if problems:
                print(f"{rows}x{cols}: FAILED: {', '.join(problems)}")
                failures += 1
    print(f"{len(shapes) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
