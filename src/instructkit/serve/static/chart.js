"use strict";
// A small SVG line chart for loss curves: train loss as a line, validation loss as a line
// with a point per evaluation, 1-2-5 "nice" ticks, and a readout of the nearest row on hover.

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** About `count` round tick values covering [low, high]. */
function niceTicks(low, high, count) {
  if (high <= low) high = low + 1;
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(low / step) * step; t <= high + step * 1e-9; t += step) {
    ticks.push(Number(t.toPrecision(12)));
  }
  return ticks;
}

/** 1234567 -> "1.23M": tokens-seen axes run into the millions. */
function compact(value) {
  const abs = Math.abs(value);
  for (const [size, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= size) return `${Number((value / size).toPrecision(3))}${suffix}`;
  }
  return `${Number(value.toPrecision(4))}`;
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);

/** Draws `rows` (metrics.jsonl rows) over `xKey` ("step" or "tokens_seen") into `svg`. */
function drawLossChart(svg, rows, xKey) {
  const width = Math.max(svg.clientWidth, 280);
  const height = Math.max(svg.clientHeight, 200);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const train = rows.filter((r) => finite(r[xKey]) && finite(r.train_loss));
  const val = rows.filter((r) => finite(r[xKey]) && finite(r.val_loss));
  if (!train.length && !val.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis-title" },
      "waiting for metrics.jsonl…"));
    return;
  }
  const margin = { left: 52, right: 14, top: 12, bottom: 38 };
  const xs = [...train, ...val].map((r) => r[xKey]);
  const ys = [...train.map((r) => r.train_loss), ...val.map((r) => r.val_loss)];
  const xTicks = niceTicks(Math.min(...xs), Math.max(...xs), Math.max(2, Math.floor(width / 110)));
  const yTicks = niceTicks(Math.min(...ys), Math.max(...ys), 5);
  const [x0, x1] = [Math.min(xTicks[0], ...xs), Math.max(xTicks.at(-1), ...xs)];
  const [y0, y1] = [Math.min(yTicks[0], ...ys), Math.max(yTicks.at(-1), ...ys)];
  const px = (x) => margin.left + ((x - x0) / (x1 - x0 || 1)) * (width - margin.left - margin.right);
  const py = (y) => height - margin.bottom - ((y - y0) / (y1 - y0 || 1)) * (height - margin.top - margin.bottom);

  const grid = svgEl("g", { class: "grid" });
  const axis = svgEl("g", { class: "axis" });
  for (const t of yTicks) {
    grid.append(svgEl("line", { x1: margin.left, x2: width - margin.right, y1: py(t), y2: py(t) }));
    axis.append(svgEl("text", { x: margin.left - 6, y: py(t) + 4, "text-anchor": "end" }, compact(t)));
  }
  for (const t of xTicks) {
    grid.append(svgEl("line", { x1: px(t), x2: px(t), y1: margin.top, y2: height - margin.bottom }));
    axis.append(svgEl("text", { x: px(t), y: height - margin.bottom + 16, "text-anchor": "middle" }, compact(t)));
  }
  axis.append(svgEl("text", { x: (width + margin.left) / 2, y: height - 4, "text-anchor": "middle", class: "axis-title" },
    xKey === "step" ? "step" : "tokens seen"));
  axis.append(svgEl("text", { x: 12, y: (height - margin.bottom) / 2, "text-anchor": "middle", class: "axis-title",
    transform: `rotate(-90 12 ${(height - margin.bottom) / 2})` }, "loss"));
  svg.append(grid, axis);

  const path = (points, key) => points.map((r, i) => `${i ? "L" : "M"}${px(r[xKey]).toFixed(1)},${py(r[key]).toFixed(1)}`).join("");
  if (train.length) svg.append(svgEl("path", { class: "train", d: path(train, "train_loss") }));
  if (train.length <= 60) {
    for (const r of train) svg.append(svgEl("circle", { class: "train", cx: px(r[xKey]), cy: py(r.train_loss), r: 2 }));
  }
  if (val.length) svg.append(svgEl("path", { class: "val", d: path(val, "val_loss") }));
  for (const r of val) svg.append(svgEl("circle", { class: "val", cx: px(r[xKey]), cy: py(r.val_loss), r: 3.5 }));
  addHover(svg, rows.filter((r) => finite(r[xKey])), xKey, px, { width, height, margin });
}

function addHover(svg, rows, xKey, px, box) {
  const layer = svgEl("g", { class: "hover", visibility: "hidden" });
  const line = svgEl("line", { y1: box.margin.top, y2: box.height - box.margin.bottom });
  const panel = svgEl("rect", { width: 168, height: 58, rx: 6 });
  const text = svgEl("text");
  layer.append(line, panel, text);
  svg.append(layer);
  svg.onpointerleave = () => layer.setAttribute("visibility", "hidden");
  svg.onpointermove = (event) => {
    const bounds = svg.getBoundingClientRect();
    const x = ((event.clientX - bounds.left) / bounds.width) * box.width;
    let best = rows[0];
    for (const r of rows) if (Math.abs(px(r[xKey]) - x) < Math.abs(px(best[xKey]) - x)) best = r;
    if (!best) return;
    const cx = px(best[xKey]);
    line.setAttribute("x1", cx);
    line.setAttribute("x2", cx);
    const left = cx + 176 > box.width ? cx - 176 : cx + 8;
    panel.setAttribute("x", left);
    panel.setAttribute("y", box.margin.top + 4);
    text.replaceChildren(
      ...[`step ${best.step} · ${compact(best.tokens_seen ?? 0)} tokens`,
        `train ${finite(best.train_loss) ? best.train_loss.toFixed(4) : "–"}`,
        `val ${finite(best.val_loss) ? best.val_loss.toFixed(4) : "–"}`]
        .map((line, i) => svgEl("tspan", { x: left + 10, y: box.margin.top + 22 + i * 15 }, line)));
    layer.setAttribute("visibility", "visible");
  };
}
