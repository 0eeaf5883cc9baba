"""What the burnt-in text check adds to a request (COVIDXRAY_BURNED_IN=redact).

    .venv/bin/python -m bench.burned_in [--repeats N]

One process, on the three benchmark images (no text: only the margin screen runs) and on the
1024² and 2500×2000 ones with a name, a date and a record number drawn into a corner (the screen,
Tesseract on the suspect bands, and the redaction of the decoded image). Prints a Markdown table
(medians, ms).
"""

from __future__ import annotations

import argparse
import io

from PIL import Image, ImageDraw, ImageFont

from bench.gate import median_ms
from bench.images import bench_images
from covidxray.imaging.burned_in import blacken, find_text, suspect_bands


def with_text(picture: Image.Image) -> Image.Image:
    """`picture` with two lines of identifiers burnt into its top-left corner."""
    out = picture.copy()
    width = out.width
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=width // 28)
    draw.text((width // 40, width // 50), "DOE JANE 1970-01-01", fill=255, font=font)
    draw.text((width // 40, width // 50 + width // 22), "MRN 4711", fill=255, font=font)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import numpy as np

    print("| image | text | bands read | median ms |\n|---|---|---|---|")
    for image in bench_images():
        picture = Image.open(io.BytesIO(image.data)).convert("L")
        ms = median_ms(lambda p=picture: suspect_bands(p), args.repeats * 20)
        print(f"| {image.name} | none | {len(suspect_bands(picture))} | {ms:.2f} |")
        if image.width < 1000:
            continue
        marked = with_text(picture)

        def check(p: Image.Image = marked) -> object:
            finding = find_text(p, suspect_bands(p))
            return blacken(np.asarray(p), finding.boxes, (1.0, 1.0), 0)

        ms = median_ms(check, args.repeats)
        print(f"| {image.name} | 2 lines | {len(suspect_bands(marked))} | {ms:.0f} |")


if __name__ == "__main__":
    main()
