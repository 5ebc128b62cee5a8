"""Screenshot of the pipeline report (reports/index.html) in headless Chromium, for the README.

Not part of the pipeline: it refreshes docs/report.png after `make demo` (the top of the page:
the summary line and the model comparison). Needs Debian's chromium; the PNG is reduced to 256
colours (Pillow) so it stays small in git.
Usage: python docs/screenshot_report.py [--report reports/index.html] [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, default=Path("reports/index.html"), help="the page (`dvc repro report`)")
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"), help="the screenshot to write")
    parser.add_argument("--width", type=int, default=1200, help="browser window width (px)")
    parser.add_argument("--height", type=int, default=1400, help="window height (px): the top of the page this tall")
    args = parser.parse_args()
    if not args.report.is_file():
        parser.error(f"{args.report}: not found; build it with `dvc repro report`")
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "shot.png"
        subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
             f"--screenshot={shot}", args.report.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        image = Image.open(shot).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
