"""Drawing helpers of the class templates: colour jitter and a page addressed in fractions."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from docclassify.utils.draws import jittered, pick

_col, _pick = jittered, pick  # the templates' names for them


# seven-segment digits: a top, b top-right, c bottom-right, d bottom, e bottom-left,
# f top-left, g middle
_SEGS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")


class _Page:
    """A drawing surface addressed in fractions of its width and height."""

    def __init__(self, img: Image.Image, rng: np.random.Generator):
        self.img = img
        self.d = ImageDraw.Draw(img)
        self.rng = rng
        self.W, self.H = img.size
        self.lw = max(1, round(max(self.W, self.H) / 180))
        self.ink = _col(rng, (45, 45, 52), 6)

    # coordinates -------------------------------------------------------------------
    def box(self, x0, y0, x1, y1):
        a, b = sorted((x0 * self.W, x1 * self.W))
        c, e = sorted((y0 * self.H, y1 * self.H))
        return [a, c, b, e]

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=None):
        self.d.rectangle(self.box(x0, y0, x1, y1), fill=fill, outline=outline,
                         width=self.lw if width is None else width)

    def hline(self, x0, x1, y, color=None, width=None):
        self.d.line([(x0 * self.W, y * self.H), (x1 * self.W, y * self.H)],
                    fill=color or self.ink, width=self.lw if width is None else width)

    def vline(self, x, y0, y1, color=None, width=None):
        self.d.line([(x * self.W, y0 * self.H), (x * self.W, y1 * self.H)],
                    fill=color or self.ink, width=self.lw if width is None else width)

    def circle(self, cx, cy, r, fill=None, outline=None, width=None):
        """Circle of radius ``r`` (fraction of the width) at (cx, cy)."""
        rp = r * self.W
        x, y = cx * self.W, cy * self.H
        self.d.ellipse([x - rp, y - rp, x + rp, y + rp], fill=fill, outline=outline,
                       width=self.lw if width is None else width)

    # content -----------------------------------------------------------------------
    def words(self, x0, x1, y, h, color=None, ragged=0.5, right=False, gap=0.7):
        """A line of "words" (dark blocks) between x0 and x1 at top y, height h (fractions)."""
        rng = self.rng
        p0, p1 = x0 * self.W, x1 * self.W
        span = (p1 - p0) * (rng.uniform(ragged, 1.0) if ragged < 1.0 else 1.0)
        if right:
            p0 = p1 - span
        else:
            p1 = p0 + span
        ph = max(1.0, h * self.H)
        top = y * self.H
        col = color or self.ink
        x = p0
        lens = rng.uniform(1.5, 5.0, 24) * ph
        i = 0
        while x < p1:
            xe = min(x + lens[i % 24], p1)
            if xe - x >= 0.8 * ph:
                self.d.rectangle([x, top, xe, top + ph], fill=col)
            x = xe + max(1.0, gap * ph)
            i += 1

    def text_block(self, x0, x1, y0, n, pitch, h, color=None, ragged=0.55):
        for k in range(n):
            self.words(x0, x1, y0 + k * pitch, h, color=color, ragged=ragged)

    def title(self, cx, y, length, h, color=None):
        """A chunky centred title: 2-4 big word blocks spanning ``length`` of the width."""
        rng = self.rng
        n = int(rng.integers(2, 5))
        x0 = cx - length / 2
        gaps = 0.02
        weights = rng.uniform(0.6, 1.4, n)
        widths = (length - gaps * (n - 1)) * weights / weights.sum()
        x = x0
        for w in widths:
            self.rect(x, y, x + w, y + h, fill=color or self.ink, width=0)
            x += w + gaps

    def photo(self, x0, y0, x1, y1):
        """An ID photo: plain backdrop, hair, face, shoulders."""
        rng = self.rng
        backdrop = _pick(rng, [(205, 215, 230), (225, 225, 225), (200, 220, 235)])
        self.rect(x0, y0, x1, y1, fill=_col(rng, backdrop, 8),
                  outline=_col(rng, (120, 120, 120), 10))
        w, h = x1 - x0, y1 - y0
        skin = _col(rng, _pick(rng, [(225, 190, 160), (200, 160, 130), (235, 205, 180)]), 8)
        hair = _col(rng, (40, 30, 25), 10)
        cloth = _col(rng, _pick(rng, [(40, 45, 70), (30, 30, 30), (90, 90, 100)]), 10)
        cx = x0 + w * rng.uniform(0.45, 0.55)
        # shoulders: upper half of an ellipse centred on the bottom edge
        self.d.chord(self.box(x0 + 0.08 * w, y0 + 0.68 * h, x1 - 0.08 * w, y1 + 0.32 * h),
                     180, 360, fill=cloth)
        # hair + face
        self.d.ellipse(self.box(cx - 0.27 * w, y0 + 0.12 * h, cx + 0.27 * w, y0 + 0.62 * h),
                       fill=hair)
        self.d.ellipse(self.box(cx - 0.22 * w, y0 + 0.2 * h, cx + 0.22 * w, y0 + 0.7 * h),
                       fill=skin)

    def stamp(self, cx, cy, r):
        red = _col(self.rng, (205, 45, 45), 12)
        self.circle(cx, cy, r, outline=red, width=max(2, self.lw + 1))
        self.circle(cx, cy, r * 0.68, outline=red, width=max(1, self.lw))
        rp = r * self.W / self.H
        self.words(cx - r * 0.45, cx + r * 0.45, cy - rp * 0.12, rp * 0.24, color=red,
                   ragged=1.0)

    def glyph(self, x0, y0, w, h, segs, sw, color):
        """Seven-segment-like glyph in pixel-free fractions; ``sw`` is a fraction of w."""
        X0, Y0, Wp, Hp = x0 * self.W, y0 * self.H, w * self.W, h * self.H
        s = max(1.0, sw * Wp)
        m = Y0 + Hp / 2
        coords = {
            "a": (X0, Y0, X0 + Wp, Y0 + s),
            "b": (X0 + Wp - s, Y0, X0 + Wp, m),
            "c": (X0 + Wp - s, m, X0 + Wp, Y0 + Hp),
            "d": (X0, Y0 + Hp - s, X0 + Wp, Y0 + Hp),
            "e": (X0, m, X0 + s, Y0 + Hp),
            "f": (X0, Y0, X0 + s, m),
            "g": (X0, m - s / 2, X0 + Wp, m + s / 2),
            "v": (X0 + Wp / 2 - s / 2, Y0, X0 + Wp / 2 + s / 2, Y0 + Hp),
        }
        for k in segs:
            self.d.rectangle(coords[k], fill=color)

    def table(self, x0, x1, y0, y1, weights, label_x=None, color=None, width=None,
              outer=None, shade=None):
        """Rows from ``weights`` between y0..y1; returns the row boundaries (fractions)."""
        col = color or self.ink
        wts = np.asarray(weights, dtype=float)
        ys = y0 + (y1 - y0) * np.concatenate([[0.0], np.cumsum(wts) / wts.sum()])
        if shade is not None and label_x is not None:
            self.rect(x0, y0, label_x, y1, fill=shade, width=0)
        for y in ys[1:-1]:
            self.hline(x0, x1, y, color=col, width=width)
        if label_x is not None:
            self.vline(label_x, y0, y1, color=col, width=width)
        self.rect(x0, y0, x1, y1, outline=col,
                  width=outer if outer is not None else max(2, 2 * self.lw))
        return ys

    def dashed(self, x0, x1, y, color=None):
        n = 40
        step = (x1 - x0) / n
        for k in range(n):
            a = x0 + k * step
            self.hline(a, a + step * 0.55, y, color=color, width=max(1, self.lw))


def _paper(rng: np.random.Generator, base=(249, 248, 245), s: float = 3.0):
    return _col(rng, base, s)
