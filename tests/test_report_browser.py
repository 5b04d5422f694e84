"""The study's report.html in a real browser: it loads without console errors and every image decodes.

Runs where Debian's ``chromium`` is installed (skipped elsewhere): the report is served on
localhost and opened inside a checking page that waits for each <img> to decode.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import threading

import pytest

from loralab.experiments.study_report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def ci(mean, half=0.01):
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": 3, "sd": half}


def synthetic_study() -> dict:
    """A study.json with claims 1 and 11 filled in (the shapes run_full_study writes)."""
    rows = [{"task": t, "full": ci(0.85), "lora_r8": ci(0.84), "ratio": {**ci(0.99, 0.005), "seeds": [0, 1, 2]},
             "verdict": "holds"} for t in ("movie", "trec")]
    points = [(0.001 * i, 0.01 * i, 10 * i, "q") for i in range(1, 6)]
    study = {"meta": {"tasks": ["movie", "trec"], "seeds": [0, 1, 2], "claims": [1, 11], "model": "minilm",
                     "sizes": {"max_train": 1000, "epochs": 3, "max_eval": 500}, "runs_trained_or_read": 12,
                     "wall_time_s": 3600, "code_version": "abc", "learning_rates": {"lora": {"grid": {"0.002": 0.8},
                                                                                            "chosen": 0.002}}},
            "claims": {"1": {"claim": 1, "title": "LoRA r=8 ≈ full FT", "verdict": "holds", "summary": "ratio 0.99",
                             "rows": rows, "params_fewer": 305},
                       "11": {"claim": 11, "title": "DoRA decouples", "verdict": "inconclusive at this n",
                              "summary": "r", "rows": {m: {"points": points, "pearson": 0.5, "spearman": 0.5}
                                                       for m in ("full", "lora", "dora")}}}}
    seeds = {str(s): {"median": m} for s, m in enumerate((-0.4, -0.1, 0.2, -0.2))}  # claim 11 since session 21
    study["claims"]["11"]["rows"]["dora"].update(per_seed=seeds, across_seeds=ci(-0.125, 0.05))
    return study


# The checker polls on a timer (which headless Chromium's virtual time advances) until the framed report
# has loaded and every <img> is complete; a broken image is complete with naturalWidth 0. An earlier
# version awaited img.decode() in the load listener, which now and then had not settled when the DOM
# was dumped (about 1 run in 10).
CHECKER = """<!doctype html><html><body>
<script>
const frame = document.createElement('iframe');
frame.style = 'width:1200px;height:3000px';
frame.src = 'report.html';
document.body.appendChild(frame);
const timer = setInterval(() => {
  const doc = frame.contentDocument;
  if (!doc || doc.readyState !== 'complete' || !doc.location.href.endsWith('report.html')) return;
  const images = [...doc.images];
  if (!images.every(i => i.complete)) return;
  clearInterval(timer);
  document.body.setAttribute('data-result', JSON.stringify({images: images.length,
    decoded: images.filter(i => i.naturalWidth > 0).length, title: doc.title}));
}, 50);
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_loads_without_console_errors_and_images_decode(tmp_path):
    write_report(synthetic_study(), tmp_path)
    (tmp_path / "check.html").write_text(CHECKER)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/check.html"
        proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                               "--v=0", "--virtual-time-budget=15000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
        subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,2400",
                        f"--screenshot={tmp_path / 'report.png'}",
                        f"http://127.0.0.1:{server.server_address[1]}/report.html"], capture_output=True, timeout=120)
    finally:
        server.shutdown()
    found = re.search(r"data-result=\"([^\"]*)\"", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result == {"images": 2, "decoded": 2, "title": "loralab full study"}
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "report.html" in line]
    assert not console, console
    assert (tmp_path / "report.png").stat().st_size > 20_000
