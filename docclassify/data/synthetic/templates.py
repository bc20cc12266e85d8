"""The 17 class templates and ``render_clean``, which draws one clean sample of a class.

Each template draws on a page filled with its paper colour; ``render_clean`` picks the page's
aspect ratio and size and, for some classes, puts a background around it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

from docclassify.data.synthetic.page import _SEGS, _col, _Page, _paper, _pick


def _account_number(p: _Page):
    """Bank book opened flat: fold in the middle, logo left, boxed account-number grid right."""
    rng = p.rng
    accent = _col(rng, _pick(rng, [(30, 110, 70), (30, 70, 150), (190, 110, 30)]), 12)
    fold = rng.uniform(0.47, 0.53)
    p.rect(fold - 0.008, 0, fold + 0.008, 1, fill=_col(rng, (205, 205, 200), 6), width=0)
    # left page: logo + bank name + lines
    lx = rng.uniform(0.05, 0.08)
    p.circle(lx + 0.05, 0.16, 0.04, fill=accent, outline=None)
    p.title(lx + 0.24, 0.12, rng.uniform(0.22, 0.3), 0.07, color=accent)
    p.text_block(lx, fold - 0.06, rng.uniform(0.32, 0.38), int(rng.integers(4, 7)), 0.09,
                 0.03)
    p.rect(lx, 0.86, fold - 0.06, 0.9, fill=accent, width=0)
    # right page: accent band + boxed digit grid + lines
    p.rect(fold + 0.02, 0.06, 0.96, 0.13, fill=accent, width=0)
    rows = int(rng.integers(2, 4))
    ncell = int(rng.integers(11, 15))
    gx0, gx1 = fold + 0.04, rng.uniform(0.92, 0.95)
    gy0 = rng.uniform(0.24, 0.3)
    ch = 0.1
    cw = (gx1 - gx0) / ncell
    for r in range(rows):
        y = gy0 + r * (ch + 0.04)
        for c in range(ncell):
            x = gx0 + c * cw
            p.rect(x, y, x + cw, y + ch, outline=p.ink, width=max(1, p.lw))
            if rng.random() < 0.85:
                p.glyph(x + cw * 0.25, y + ch * 0.18, cw * 0.5, ch * 0.64,
                        _SEGS[int(rng.integers(10))], 0.25, p.ink)
    p.text_block(fold + 0.04, 0.94, gy0 + rows * (ch + 0.04) + 0.04, int(rng.integers(2, 4)),
                 0.08, 0.03)


def _pregnancy_application(p: _Page):
    """Long application form: long title, shaded label column, many rows, checkboxes."""
    rng = p.rng
    mx = rng.uniform(0.06, 0.09)
    p.words(mx, mx + 0.3, 0.03, 0.01)
    p.title(0.5, rng.uniform(0.065, 0.08), rng.uniform(0.62, 0.72), 0.028)
    p.rect(1 - mx - 0.2, 0.12, 1 - mx, 0.15, outline=p.ink)
    y0, y1 = rng.uniform(0.17, 0.19), rng.uniform(0.82, 0.86)
    n = int(rng.integers(13, 16))
    lab = mx + rng.uniform(0.16, 0.2)
    ys = p.table(mx, 1 - mx, y0, y1, np.ones(n), label_x=lab,
                 shade=_col(rng, (212, 212, 212), 6))
    for k in range(n):
        rh = ys[k + 1] - ys[k]
        p.words(mx + 0.015, lab - 0.015, ys[k] + rh * 0.3, rh * 0.35)
        if k % 3 == 1:  # a row of checkboxes
            x = lab + 0.03
            for _ in range(int(rng.integers(2, 4))):
                p.rect(x, ys[k] + rh * 0.25, x + 0.03, ys[k] + rh * 0.75, outline=p.ink,
                       width=max(1, p.lw))
                p.words(x + 0.045, x + 0.17, ys[k] + rh * 0.35, rh * 0.3, ragged=0.7)
                x += 0.22
        elif rng.random() < 0.7:
            p.words(lab + 0.02, 1 - mx - 0.02, ys[k] + rh * 0.3, rh * 0.35)
    p.words(0.45, 1 - mx, y1 + 0.04, 0.012)
    p.words(0.55, 1 - mx, y1 + 0.08, 0.012)


def _car_dashboard(p: _Page):
    """Dark instrument cluster with two or three round dials."""
    rng = p.rng
    W, H = p.W, p.H
    top = np.array(_col(rng, (35, 35, 42), 8), dtype=np.float32)
    bot = np.array(_col(rng, (10, 10, 14), 4), dtype=np.float32)
    t = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None]
    grad = top[None, :] * (1 - t) + bot[None, :] * t
    p.img.paste(Image.fromarray(np.repeat(grad[:, None, :], W, axis=1).astype(np.uint8)))
    p.d = ImageDraw.Draw(p.img)
    n = int(rng.integers(2, 4))
    ring = _col(rng, _pick(rng, [(230, 230, 235), (240, 150, 40), (90, 170, 240)]), 10)
    needle = _col(rng, (235, 60, 30), 10)
    cy = rng.uniform(0.45, 0.55)
    r = min(0.42 * H / W, 0.92 / (2 * n)) * rng.uniform(0.85, 1.0)
    xs = 0.06 + 0.88 * (np.arange(n) + 0.5) / n + rng.uniform(-0.015, 0.015, n)
    big = int(rng.integers(n))
    for i, cx in enumerate(xs):
        rr = r * (1.0 if i == big or n == 2 else 0.78)
        p.circle(cx, cy, rr, fill=_col(rng, (22, 22, 28), 4), outline=ring,
                 width=max(2, 2 * p.lw))
        ccx, ccy, rp = cx * W, cy * H, rr * W
        nt = int(rng.integers(9, 14))
        for k in range(nt):
            a = math.radians(-210 + 240 * k / (nt - 1))
            p.d.line([(ccx + 0.8 * rp * math.cos(a), ccy + 0.8 * rp * math.sin(a)),
                      (ccx + 0.95 * rp * math.cos(a), ccy + 0.95 * rp * math.sin(a))],
                     fill=ring, width=max(1, p.lw))
        a = math.radians(-210 + 240 * rng.uniform(0.05, 0.95))
        p.d.line([(ccx, ccy), (ccx + 0.75 * rp * math.cos(a), ccy + 0.75 * rp * math.sin(a))],
                 fill=needle, width=max(2, 2 * p.lw))
        p.circle(cx, cy, rr * 0.12, fill=_col(rng, (70, 70, 70), 6), outline=None)
    # LCD strip and warning lights
    gap = (xs[1] - xs[0]) - 2 * r
    if n == 2 and gap > 0.06:
        half = gap * 0.3
        p.rect(0.5 - half, cy - 0.12, 0.5 + half, cy + 0.12, fill=_col(rng, (40, 60, 80), 8),
               outline=ring, width=max(1, p.lw))
    for _ in range(int(rng.integers(2, 6))):
        c = _pick(rng, [(240, 170, 20), (220, 40, 30), (40, 200, 80), (60, 140, 240)])
        p.circle(rng.uniform(0.1, 0.9), rng.uniform(0.88, 0.95), 0.012, fill=_col(rng, c, 10),
                 outline=None)


def _card(p: _Page, photo_left: bool, band: bool):
    rng = p.rng
    if band:  # driver's licence: pink/green body, coloured band with white title, photo left
        body = _col(rng, _pick(rng, [(246, 226, 226), (226, 242, 228)]), 5)
        bandc = _col(rng, _pick(rng, [(40, 140, 140), (190, 70, 110)]), 12)
    else:  # national id: pale blue-grey body, emblem, photo right
        body = _col(rng, (232, 238, 246), 5)
        bandc = None
    p.d.rounded_rectangle([0, 0, p.W - 1, p.H - 1], radius=int(0.06 * p.H), fill=body,
                          outline=_col(rng, (170, 170, 175), 8), width=max(1, p.lw))
    if band:
        p.rect(0.0, 0.0, 1.0, rng.uniform(0.18, 0.22), fill=bandc, width=0)
        p.title(rng.uniform(0.45, 0.55), 0.06, rng.uniform(0.45, 0.6), 0.08,
                color=(250, 250, 250))
    else:
        p.circle(0.48, 0.55, 0.14, outline=_col(rng, (200, 205, 220), 6), width=3 * p.lw)
        p.title(rng.uniform(0.28, 0.33), rng.uniform(0.08, 0.11), rng.uniform(0.35, 0.45), 0.08)
    py0 = 0.3 if band else rng.uniform(0.2, 0.25)
    if photo_left:
        px0 = rng.uniform(0.05, 0.07)
        p.photo(px0, py0, px0 + 0.26, py0 + 0.58)
        tx0, tx1 = px0 + 0.32, 0.93
    else:
        px0 = rng.uniform(0.67, 0.69)
        p.photo(px0, py0, px0 + 0.26, py0 + 0.58)
        tx0, tx1 = 0.06, px0 - 0.06
    n = int(rng.integers(4, 7))
    ty = 0.32 if band else 0.3
    pitch = (0.84 - ty) / n
    p.text_block(tx0, tx1, ty + rng.uniform(0, 0.02), n, pitch, 0.045)
    if band:
        p.circle(rng.uniform(0.82, 0.88), 0.85, 0.05, fill=_col(rng, (190, 220, 200), 10),
                 outline=None)
    else:
        p.stamp(px0 - 0.04, 0.8, 0.05)


def _driver_lisence(p: _Page):
    _card(p, photo_left=True, band=True)


def _national_id_card(p: _Page):
    _card(p, photo_left=False, band=False)


def _medical_bill_receipts(p: _Page):
    """Hospital bill: a dense full-page grid with a shaded header row and a totals box."""
    rng = p.rng
    mx = rng.uniform(0.05, 0.08)
    p.title(0.5, rng.uniform(0.04, 0.06), rng.uniform(0.35, 0.45), 0.028)
    head = _col(rng, _pick(rng, [(200, 222, 240), (210, 236, 210)]), 8)
    y0, y1 = rng.uniform(0.11, 0.13), rng.uniform(0.76, 0.8)
    ncol = int(rng.integers(6, 9))
    nrow = int(rng.integers(18, 25))
    xs = np.linspace(mx, 1 - mx, ncol + 1)
    xs[1] = mx + rng.uniform(0.18, 0.24)
    xs[2:-1] = np.linspace(xs[1], 1 - mx, ncol)[1:-1]
    ys = np.linspace(y0, y1, nrow + 1)
    p.rect(mx, ys[0], 1 - mx, ys[1], fill=head, width=0)
    p.rect(mx, ys[1], xs[1], y1, fill=_col(rng, (236, 236, 236), 4), width=0)
    thin = max(1, p.lw - 1)
    for y in ys[1:-1]:
        p.hline(mx, 1 - mx, y, width=thin)
    for x in xs[1:-1]:
        p.vline(x, y0, y1, width=thin)
    p.rect(mx, y0, 1 - mx, y1, outline=p.ink, width=max(2, 2 * p.lw))
    rh = ys[1] - ys[0]
    for r in range(1, nrow):
        for c in range(1, ncol):
            if rng.random() < 0.55:
                p.words(xs[c] + 0.01, xs[c + 1] - 0.01, ys[r] + rh * 0.3, rh * 0.4, right=True)
        p.words(xs[0] + 0.01, xs[1] - 0.01, ys[r] + rh * 0.3, rh * 0.4)
    bx = rng.uniform(0.45, 0.55)
    p.rect(bx, y1 + 0.04, 1 - mx, y1 + 0.13, outline=p.ink, width=max(2, 2 * p.lw))
    p.words(bx + 0.03, 1 - mx - 0.03, y1 + 0.06, 0.02, ragged=0.8)
    p.words(bx + 0.03, 1 - mx - 0.03, y1 + 0.095, 0.02, ragged=0.8)
    p.words(mx, bx - 0.05, y1 + 0.07, 0.012)


def _passport(p: _Page):
    """Portrait passport page: guilloche tint, photo left, machine-readable zone at the bottom."""
    rng = p.rng
    W, H = p.W, p.H
    tint = np.array(p.img.getpixel((0, 0)), dtype=float)
    line = tuple(int(v) for v in np.clip(tint - 28, 0, 255))
    xs = np.linspace(0, W, 40)
    for k in range(int(rng.integers(7, 11))):
        y0 = H * (0.05 + 0.07 * k)
        amp, ph, fr = H * rng.uniform(0.01, 0.03), rng.uniform(0, 6.3), rng.uniform(2, 5)
        pts = [(float(x), float(y0 + amp * math.sin(fr * x / W * 6.283 + ph))) for x in xs]
        p.d.line(pts, fill=line, width=max(1, p.lw))
    p.title(rng.uniform(0.35, 0.5), rng.uniform(0.05, 0.07), rng.uniform(0.4, 0.6), 0.025,
            color=_col(rng, (60, 40, 90), 10))
    px0, py0 = rng.uniform(0.06, 0.09), rng.uniform(0.15, 0.19)
    p.photo(px0, py0, px0 + 0.32, py0 + 0.33)
    n = int(rng.integers(6, 9))
    p.text_block(px0 + 0.37, 0.94, py0, n, 0.33 / n, 0.012)
    # signature squiggle
    sx = np.linspace(px0 * W, (px0 + 0.3) * W, 16)
    sy = (py0 + 0.4) * H + rng.normal(0, 0.01 * H, 16)
    p.d.line(list(zip(sx.tolist(), sy.tolist(), strict=True)), fill=p.ink, width=max(1, p.lw))
    p.text_block(0.08, 0.9, py0 + 0.46, int(rng.integers(2, 4)), 0.04, 0.012)
    # MRZ
    mz0 = rng.uniform(0.76, 0.8)
    p.rect(0.0, mz0, 1.0, 0.97, fill=_col(rng, (246, 246, 242), 3), width=0)
    nchar = int(rng.integers(36, 45))
    cw = 0.9 / nchar
    for row in range(2):
        y = mz0 + 0.04 + row * 0.075
        for k in range(nchar):
            x = 0.05 + k * cw
            if rng.random() < 0.82:
                p.rect(x, y, x + cw * 0.62, y + 0.035, fill=p.ink, width=0)


def _payment_confirmation(p: _Page):
    """Bank payment confirmation: coloured header band, key-value rows, boxed amount, stamp."""
    rng = p.rng
    bandc = _col(rng, _pick(rng, [(25, 75, 160), (20, 130, 90), (220, 120, 30),
                                  (30, 40, 80)]), 12)
    bh = rng.uniform(0.07, 0.1)
    p.rect(0, 0, 1, bh, fill=bandc, width=0)
    p.title(rng.uniform(0.2, 0.3), bh * 0.3, rng.uniform(0.2, 0.3), bh * 0.4,
            color=(250, 250, 250))
    p.title(0.5, bh + rng.uniform(0.05, 0.07), rng.uniform(0.4, 0.5), 0.028)
    mx = rng.uniform(0.08, 0.12)
    n = int(rng.integers(7, 11))
    y = bh + 0.15
    pitch = rng.uniform(0.042, 0.05)
    grey = _col(rng, (130, 130, 135), 8)
    for _ in range(n):
        p.words(mx, mx + 0.25, y, 0.013, color=grey)
        p.words(0.5, 1 - mx, y, 0.013, right=True)
        p.hline(mx, 1 - mx, y + pitch * 0.72, color=_col(rng, (205, 205, 210), 4),
                width=max(1, p.lw - 1))
        y += pitch
    by = y + rng.uniform(0.03, 0.05)
    p.d.rounded_rectangle(p.box(mx, by, 1 - mx, by + 0.1), radius=int(0.02 * p.H),
                          outline=bandc, width=max(2, 2 * p.lw))
    p.words(mx + 0.05, 0.4, by + 0.04, 0.02, color=grey, ragged=0.9)
    p.title(0.68, by + 0.03, rng.uniform(0.3, 0.4), 0.04)
    p.stamp(rng.uniform(0.72, 0.8), min(0.9, by + 0.2), 0.07)
    p.words(mx, 0.6, 0.95, 0.01, color=grey)


def _pharmaceutical_receipt(p: _Page):
    """Narrow thermal-paper receipt: dense short lines, dashed rules, totals and a barcode."""
    rng = p.rng
    mx = rng.uniform(0.06, 0.1)
    p.title(0.5, 0.03, rng.uniform(0.5, 0.7), 0.02)
    for k in range(3):
        p.words(0.2, 0.8, 0.065 + k * 0.018, 0.007, ragged=0.6)
    p.dashed(mx, 1 - mx, 0.13)
    n = int(rng.integers(14, 22))
    pitch = 0.5 / n
    for k in range(n):
        y = 0.15 + k * pitch
        p.words(mx, 0.6, y, pitch * 0.45, ragged=0.4)
        p.words(0.68, 1 - mx, y, pitch * 0.45, right=True, ragged=0.5)
    p.dashed(mx, 1 - mx, 0.67)
    for k in range(int(rng.integers(2, 4))):
        y = 0.69 + k * 0.035
        p.words(mx, 0.4, y, 0.018, ragged=0.7)
        p.rect(rng.uniform(0.55, 0.65), y, 1 - mx, y + 0.022, fill=p.ink, width=0)
    p.dashed(mx, 1 - mx, 0.81)
    # barcode
    x = rng.uniform(0.15, 0.22)
    while x < 0.8:
        w = rng.choice([0.008, 0.015, 0.025])
        p.rect(x, 0.84, x + w, 0.93, fill=p.ink, width=0)
        x += w + rng.choice([0.01, 0.018])


def _resume(p: _Page):
    """Resume: name and photo at the top, accent-coloured section headers with text below."""
    rng = p.rng
    accent = _col(rng, _pick(rng, [(30, 50, 110), (20, 120, 120), (130, 30, 40),
                                   (90, 90, 90)]), 10)
    mx = rng.uniform(0.07, 0.1)
    px0, py0 = rng.uniform(0.68, 0.72), rng.uniform(0.04, 0.06)
    p.photo(px0, py0, px0 + 0.22, py0 + 0.2)
    p.rect(mx, py0 + 0.03, mx + rng.uniform(0.3, 0.4), py0 + 0.065, fill=p.ink, width=0)
    p.text_block(mx, px0 - 0.06, py0 + 0.1, 3, 0.03, 0.011)
    y = py0 + 0.23
    nsec = int(rng.integers(4, 6))
    avail = 0.94 - y
    for _ in range(nsec):
        p.rect(mx, y, mx + 0.03, y + 0.025, fill=accent, width=0)
        p.words(mx + 0.05, mx + 0.35, y + 0.003, 0.02, color=accent, ragged=0.7)
        p.hline(mx, 1 - mx, y + 0.035, color=accent, width=max(1, p.lw))
        nl = int(rng.integers(2, 5))
        p.text_block(mx + 0.05, 1 - mx, y + 0.05, nl, 0.025, 0.01)
        y += max(avail / nsec, 0.07 + nl * 0.025)
        if y > 0.9:
            break


def _vehicle_registration_certificate(p: _Page):
    """Registration certificate: tinted paper, coloured double frame, emblem, dense table."""
    rng = p.rng
    frame = _col(rng, _pick(rng, [(60, 120, 70), (140, 100, 40), (60, 90, 140)]), 12)
    p.rect(0.03, 0.025, 0.97, 0.975, outline=frame, width=max(3, 3 * p.lw))
    p.rect(0.055, 0.04, 0.945, 0.96, outline=frame, width=max(1, p.lw))
    p.circle(rng.uniform(0.17, 0.22), 0.085, 0.045, outline=frame, width=max(2, 2 * p.lw))
    p.title(0.55, rng.uniform(0.07, 0.08), rng.uniform(0.45, 0.55), 0.028)
    y0, y1 = rng.uniform(0.15, 0.17), rng.uniform(0.86, 0.9)
    n = int(rng.integers(14, 18))
    mx = 0.09
    cols = [mx, mx + 0.17, 0.5, 0.67, 1 - mx]
    ys = np.linspace(y0, y1, n + 1)
    p.rect(cols[0], y0, cols[1], y1, fill=_col(rng, (220, 230, 215), 5), width=0)
    p.rect(cols[2], y0, cols[3], y1, fill=_col(rng, (220, 230, 215), 5), width=0)
    for k, y in enumerate(ys[1:-1], start=1):
        p.hline(mx, 1 - mx, y, width=max(2, 2 * p.lw) if k % 4 == 0 else max(1, p.lw - 1))
    for x in cols[1:-1]:
        p.vline(x, y0, y1, width=max(1, p.lw - 1))
    p.rect(mx, y0, 1 - mx, y1, outline=p.ink, width=max(2, 2 * p.lw))
    rh = ys[1] - ys[0]
    for k in range(n):
        for c in range(4):
            if c % 2 == 0 or rng.random() < 0.8:
                p.words(cols[c] + 0.01, cols[c + 1] - 0.01, ys[k] + rh * 0.3, rh * 0.4,
                        ragged=0.6)


def _vehicle_registration_plate(p: _Page):
    """Licence plate: white/yellow/green plate, black border, seven big glyphs."""
    rng = p.rng
    base = _pick(rng, [(245, 245, 245), (245, 245, 245), (240, 200, 40), (40, 120, 70)])
    plate = _col(rng, base, 5)
    glyph = (245, 245, 245) if base[1] == 120 else _col(rng, (25, 25, 30), 5)
    p.d.rounded_rectangle([0, 0, p.W - 1, p.H - 1], radius=int(0.12 * p.H), fill=plate,
                          outline=_col(rng, (20, 20, 20), 5), width=max(2, int(0.05 * p.H)))
    aspect = p.W / p.H
    gh = rng.uniform(0.6, 0.68)
    gy = (1 - gh) / 2 + rng.uniform(-0.03, 0.03)
    slots = "dd" + "L" + "dddd" if rng.random() < 0.7 else "dd" + "L" + "ddd" + "d"
    x0, x1 = rng.uniform(0.06, 0.09), rng.uniform(0.91, 0.94)
    slot = (x1 - x0) / len(slots)
    gw = min(slot * 0.75, gh * 0.55 / aspect)
    for i, s in enumerate(slots):
        x = x0 + i * slot + (slot - gw) / 2
        if s == "d":
            segs = _SEGS[int(rng.integers(10))]
        else:
            segs = "".join(k for k in "afgdv" if rng.random() < 0.6) or "av"
        p.glyph(x, gy, gw, gh, segs, 0.2, glyph)


_FORM_TWINS = {
    # near-twin white A4 forms; they differ in title length, table rows, stamp position
    3: {"title": 0.70, "table": (0.16, 0.56), "rows": (1, 1, 1, 1, 1.6, 1.6), "split": (4, 5),
        "para": 3, "stamp": (0.78, 0.84)},
    4: {"title": 0.33, "table": (0.16, 0.74), "rows": (1, 1, 1, 1, 4.0), "split": (),
        "para": 1, "stamp": (0.80, 0.88)},
    7: {"title": 0.52, "table": (0.20, 0.50), "rows": (1, 1, 1, 1), "split": (),
        "para": 2, "stamp": (0.50, 0.88), "grid": True},
    12: {"title": 0.26, "table": (0.13, 0.83), "rows": (1.3, 1.3, 1.3) + (1,) * 8,
         "split": tuple(range(3, 11)), "para": 0, "stamp": (0.84, 0.06)},
    14: {"title": 0.44, "table": (0.16, 0.36), "rows": (1, 1, 1), "split": (),
         "para": 14, "stamp": (0.22, 0.89)},
}


def _form_twin(p: _Page, cls: int):
    cfg = _FORM_TWINS[cls]
    rng = p.rng
    mx = rng.uniform(0.07, 0.1)
    dy = rng.uniform(-0.015, 0.015)
    p.words(mx, mx + 0.25, 0.03, 0.01)
    p.title(0.5 + rng.uniform(-0.03, 0.03), 0.075 + dy, cfg["title"] + rng.uniform(-0.06, 0.06),
            0.03)
    t0, t1 = cfg["table"]
    t0 += dy + rng.uniform(-0.01, 0.01)
    t1 += dy + rng.uniform(-0.03, 0.03)
    lab = mx + rng.uniform(0.18, 0.24)
    ys = p.table(mx, 1 - mx, t0, t1, cfg["rows"], label_x=lab)
    for k in range(len(cfg["rows"])):
        rh = ys[k + 1] - ys[k]
        lh = min(rh * 0.4, 0.013)
        p.words(mx + 0.015, lab - 0.015, ys[k] + rh / 2 - lh / 2, lh, ragged=0.6)
        if k in cfg["split"]:
            xs = np.linspace(lab, 1 - mx, 4 if cls == 12 else 3)
            for x in xs[1:-1]:
                p.vline(x, ys[k], ys[k + 1], width=max(1, p.lw))
            for a, b in itertools.pairwise(xs):
                if rng.random() < 0.8:
                    p.words(a + 0.015, b - 0.015, ys[k] + rh / 2 - lh / 2, lh, ragged=0.5)
        elif rh > 0.1:  # a tall free-text cell
            nl = int(rh / 0.03) - 1
            p.text_block(lab + 0.02, 1 - mx - 0.02, ys[k] + 0.015, nl, 0.03, 0.011)
        elif rng.random() < 0.85:
            p.words(lab + 0.02, 1 - mx - 0.02, ys[k] + rh / 2 - lh / 2, lh)
    y = t1 + 0.03
    if cfg.get("grid"):  # visit-date grid
        gx = np.linspace(mx, 1 - mx, 8)
        gy = np.linspace(y, y + 0.12, 4)
        for x in gx:
            p.vline(x, gy[0], gy[-1], width=max(1, p.lw))
        for yy in gy:
            p.hline(mx, 1 - mx, yy, width=max(1, p.lw))
        y = gy[-1] + 0.03
    if cfg["para"]:
        p.text_block(mx, 1 - mx, y, cfg["para"], 0.028, 0.011, ragged=0.8)
        y += cfg["para"] * 0.028
    p.words(0.5 - 0.15, 0.5 + 0.15, max(y + 0.02, 0.86), 0.011, ragged=0.9)
    p.words(mx, mx + 0.3, 0.94, 0.011)
    p.words(0.55, 1 - mx, 0.94, 0.011)
    sx, sy = cfg["stamp"]
    if rng.random() < 0.9:  # some forms were never stamped
        p.stamp(sx + rng.uniform(-0.05, 0.05), sy + rng.uniform(-0.03, 0.03), 0.065)


# per class: (aspect w/h range, probability of a background around the page,
#             background margin range as fractions of the page size, paper colour, drawer)
_PORTRAIT = (1 / 1.45, 1 / 1.36)
_WHITE = (249, 248, 245)
_TEMPLATES: dict[int, tuple] = {
    0: ((1.3, 1.5), 0.5, (0.04, 0.16), _WHITE, _account_number),
    1: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, _pregnancy_application),
    2: ((1.35, 1.8), 0.0, (0.0, 0.0), (20, 20, 24), _car_dashboard),
    3: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, lambda p: _form_twin(p, 3)),
    4: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, lambda p: _form_twin(p, 4)),
    5: ((1.55, 1.62), 0.6, (0.06, 0.25), (250, 250, 250), _driver_lisence),
    6: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, _medical_bill_receipts),
    7: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, lambda p: _form_twin(p, 7)),
    8: ((1.55, 1.62), 0.6, (0.06, 0.25), (250, 250, 250), _national_id_card),
    9: (_PORTRAIT, 0.5, (0.04, 0.15), None, _passport),
    10: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, _payment_confirmation),
    11: ((1 / 2.8, 1 / 2.0), 0.7, (0.1, 0.5), (242, 241, 236), _pharmaceutical_receipt),
    12: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, lambda p: _form_twin(p, 12)),
    13: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, _resume),
    14: (_PORTRAIT, 0.25, (0.03, 0.12), _WHITE, lambda p: _form_twin(p, 14)),
    15: (_PORTRAIT, 0.25, (0.03, 0.12), (238, 242, 226), _vehicle_registration_certificate),
    16: ((2.4, 4.7), 0.85, (0.12, 0.6), None, _vehicle_registration_plate),
}
_BACKGROUNDS = [(140, 100, 65), (120, 120, 120), (45, 45, 50), (200, 190, 170), (60, 80, 110),
                (175, 175, 170)]


def _background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    a = np.array(_col(rng, _pick(rng, _BACKGROUNDS), 12), dtype=np.float32)
    b = a * rng.uniform(0.7, 1.1)
    if rng.random() < 0.5:
        t = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(a * (1 - t) + b * t, (H, W, 3))
    else:
        t = np.linspace(0.0, 1.0, W, dtype=np.float32)[None, :, None]
        arr = np.broadcast_to(a * (1 - t) + b * t, (H, W, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_clean(target: int, rng: np.random.Generator, long_side: int) -> Image.Image:
    """Draw one clean sample of class ``target`` with its long side ``long_side`` pixels."""
    (a_lo, a_hi), p_bg, (m_lo, m_hi), paper, draw = _TEMPLATES[target]
    aspect = rng.uniform(a_lo, a_hi)  # page width / height
    bg = rng.random() < p_bg
    if bg:
        ml, mr, mt, mb = rng.uniform(m_lo, m_hi, 4)
        if target == 16:  # plates sit on a car: much more room above and below
            mt, mb = mt * 2.5, mb * 2.5
    else:
        ml = mr = mt = mb = 0.0
    cw, ch = aspect * (1 + ml + mr), 1 + mt + mb  # canvas in page-height units
    scale = long_side / max(cw, ch)
    W, H = max(8, round(cw * scale)), max(8, round(ch * scale))
    pw, ph = max(8, round(aspect * scale)), max(8, round(scale))
    if paper is None:  # passport tint / plate surround
        paper = _pick(rng, [(246, 228, 232), (226, 236, 246), (230, 244, 232)]) \
            if target == 9 else (250, 250, 250)
    page = Image.new("RGB", (pw, ph), _paper(rng, paper, 3 if target != 2 else 2))
    draw(_Page(page, rng))
    if not bg:
        if page.size != (W, H):
            page = page.resize((W, H), Image.BILINEAR)
        return page
    canvas = _background(rng, W, H)
    canvas.paste(page, (min(W - pw, round(ml * pw)), min(H - ph, round(mt * ph))))
    if target == 16:  # bumper band below the plate
        d = ImageDraw.Draw(canvas)
        y = min(H - 1, round(mt * ph + ph * 1.15))
        d.rectangle([0, y, W, min(H, y + max(2, ph // 3))], fill=_col(rng, (30, 30, 32), 5))
    return canvas
