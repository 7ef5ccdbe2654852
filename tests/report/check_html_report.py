#!/usr/bin/env python3
"""Opens a kleakd HTML report in headless Chromium and checks what its scripts drew.

usage: check_html_report.py REPORT.html [--expect-site NAME]... [--min-curves N]
                            [--expect-restart] [--screenshot OUT.png]

Chromium runs the page with a virtual-time budget (timers and transitions run
out), then prints the DOM as the scripts left it (--dump-dom), and its console
messages go to its log on stderr. Fails, saying why, when: the page caught a
script error (data-kleak-errors), the page did not finish
drawing (data-kleak-rendered), anything was logged to the console (an
error, or a Content-Security-Policy violation: something tried to load), the
icicle has no boxes, fewer growth curves
than asked were drawn as lines, an expected call site is not named in the
icicle, a curve's title and the verdict table, or injected markup from the
data became elements (the fixture's site names try). Needs no network: the
page loads nothing, and the check runs it with networking off.
"""
import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("check_html_report: no chromium found (Debian: apt-get install chromium; scripts/install-deps.sh does)")


def run_chromium(args, page, profile):
    # Root needs --no-sandbox; --disable-gpu and --disable-dev-shm-usage keep it working in containers and VMs.
    # The proxy pointing nowhere makes any fetch the page tried fail (and log an error).
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--user-data-dir=" + profile,
               "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"] + args + ["file://" + os.path.abspath(page)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def section(dom, begin, end):
    """The dumped DOM between two markers of the template ("" if absent)."""
    i = dom.find(begin)
    if i < 0:
        return ""
    j = dom.find(end, i)
    return dom[i:j if j >= 0 else len(dom)]


def text_of(markup):
    return html.unescape(re.sub(r"<[^>]*>", " ", markup))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("--expect-site", action="append", default=[])
    parser.add_argument("--min-curves", type=int, default=1)
    parser.add_argument("--expect-restart", action="store_true")
    parser.add_argument("--screenshot")
    options = parser.parse_args()

    problems = []
    with tempfile.TemporaryDirectory() as profile:
        result = run_chromium(["--dump-dom"], options.report, profile)
        if result.returncode != 0:
            sys.exit("check_html_report: chromium failed (exit %d):\n%s" % (result.returncode, result.stderr[-3000:]))
        # The page logs nothing when it works: any console message (an error, a
        # Content-Security-Policy violation: something tried to load) fails.
        console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
        problems += ["console: " + line for line in console]
        if options.screenshot:
            shot = run_chromium(["--screenshot=" + os.path.abspath(options.screenshot), "--window-size=1360,2400",
                                 "--hide-scrollbars"], options.report, profile)
            if shot.returncode != 0 or not os.path.exists(options.screenshot):
                problems.append("the screenshot failed: " + shot.stderr[-1000:])

    dom = result.stdout
    body = re.search(r"<body([^>]*)>", dom)
    body_attrs = body.group(1) if body else ""
    flame = section(dom, 'id="flame"', "<h2>")
    curves = section(dom, 'id="curves"', "<h2>")
    table = section(dom, "<tbody>", "</tbody>")
    flame_rects = flame.count("<rect")
    series = len(re.findall(r'<path[^>]*class="series"', curves))
    restarts = len(re.findall(r'<g[^>]*class="restart"', curves))
    rows = table.count("<tr")
    titles = [text_of(t) for t in re.findall(r'<div class="title">(.*?)</div>', curves, re.S)]
    if 'data-kleak-rendered="ok"' not in body_attrs:
        problems.append("the page did not finish drawing (no data-kleak-rendered=ok on <body>)")
    if "data-kleak-errors" in body_attrs:
        problems.append("the page caught script errors: " + text_of(section(dom, 'id="errors"', "</div>")))
    if flame_rects < 2:
        problems.append("the icicle has %d boxes" % flame_rects)
    if series < options.min_curves:
        problems.append("%d growth curves drawn as lines, %d expected" % (series, options.min_curves))
    if options.expect_restart and restarts == 0:
        problems.append("no restart mark on any curve")
    # The template has four <script> elements and no <img>: any more came from the data.
    scripts, images = len(re.findall(r"<script\b", dom, re.I)), len(re.findall(r"<img\b", dom, re.I))
    if scripts != 4 or images != 0:
        problems.append("markup from the data became elements: %d <script>, %d <img>" % (scripts, images))
    # Every box carries its full name (a label is cut to fit its box).
    flame_text = "\n".join(html.unescape(n) for n in re.findall(r'data-name="([^"]*)"', flame))
    table_text = text_of(table)
    for site in options.expect_site:
        function = site.split("+")[0]
        if function not in flame_text:
            problems.append("the icicle does not name %s" % function)
        if site not in table_text:
            problems.append("the verdict table does not name %s" % site)
        if not any(site in t for t in titles):
            problems.append("no growth curve is titled %s (curves: %s)" % (site, titles))

    summary = "%s: %d icicle boxes, %d curves, %d table rows, %d restart marks, %d console lines" % (
        options.report, flame_rects, series, rows, restarts, len(console))
    if problems:
        print(summary)
        print("\n".join("FAIL: " + p for p in problems))
        return 1
    print(summary + ": ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
