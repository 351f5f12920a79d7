// Inline SVG charts: the time series of the overview and the realtime
// minute bars. Colours come from the page's CSS classes.
import { s } from "./dom.js";
import { count } from "./format.js";

/** One point of the time series. */
export interface Bucket {
  /** The report's time value, e.g. "2026-11-20" or "2026-11-20T14:00". */
  key: string;
  /** Short axis label, e.g. "Nov 20" or "14:00". */
  label: string;
  visitors: number;
  pageviews: number;
  /** Visitors in the matching bucket of the previous period, when compared. */
  previous?: number;
}

/** The top of an axis with four ticks at whole, round steps that reaches `value`. */
export function niceMax(value: number): number {
  const raw = Math.max(value, 1) / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * power).find((m) => m >= raw && Number.isInteger(m))!;
  return step * 4;
}

const HEIGHT = 220;
const LEFT = 44;
const RIGHT = 12;
const TOP = 12;
const BOTTOM = 26;

/** Visitors (area and line), page views (line) and the previous period's visitors (dashed), per bucket. */
export function seriesChart(buckets: Bucket[], width: number): SVGElement {
  const w = Math.max(width, 320);
  const plotW = w - LEFT - RIGHT;
  const plotH = HEIGHT - TOP - BOTTOM;
  const max = niceMax(Math.max(0, ...buckets.flatMap((b) => [b.visitors, b.pageviews, b.previous ?? 0])));
  const step = buckets.length > 1 ? plotW / (buckets.length - 1) : 0;
  const x = (i: number) => LEFT + (buckets.length > 1 ? i * step : plotW / 2);
  const y = (v: number) => TOP + plotH - (v / max) * plotH;
  const line = (values: number[]) => values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");

  const svg = s("svg", { viewBox: `0 0 ${w} ${HEIGHT}`, width: "100%", height: HEIGHT, role: "img", "aria-label": "Visitors and page views over time", class: "series" });
  for (let t = 0; t <= 4; t++) {
    const value = (max / 4) * t;
    svg.append(
      s("line", { x1: LEFT, x2: w - RIGHT, y1: y(value), y2: y(value), class: "grid" }),
      s("text", { x: LEFT - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" }, count(value)),
    );
  }
  const labels = Math.min(buckets.length, Math.max(2, Math.floor(plotW / 90)));
  for (let k = 0; k < labels; k++) {
    const i = labels == 1 ? 0 : Math.round((k * (buckets.length - 1)) / (labels - 1));
    svg.append(s("text", { x: x(i), y: HEIGHT - 6, class: "axis", "text-anchor": k == 0 && labels > 1 ? "start" : k == labels - 1 && labels > 1 ? "end" : "middle" }, buckets[i].label));
  }
  if (buckets.length) {
    const visitors = buckets.map((b) => b.visitors);
    if (buckets.some((b) => b.previous != null)) svg.append(s("path", { d: line(buckets.map((b) => b.previous ?? 0)), class: "previous" }));
    svg.append(
      s("path", { d: `${line(visitors)}L${x(buckets.length - 1)},${y(0)}L${x(0)},${y(0)}Z`, class: "area" }),
      s("path", { d: line(buckets.map((b) => b.pageviews)), class: "pageviews" }),
      s("path", { d: line(visitors), class: "visitors" }),
    );
  }
  // One hover target per bucket, carrying its numbers.
  buckets.forEach((b, i) => {
    const half = buckets.length > 1 ? step / 2 : plotW / 2;
    const text = `${b.label}: ${count(b.visitors)} visitors, ${count(b.pageviews)} page views${b.previous != null ? ` (previous period: ${count(b.previous)} visitors)` : ""}`;
    svg.append(
      s(
        "rect",
        { x: x(i) - half, y: TOP, width: half * 2, height: plotH, class: "hover", "data-bucket": b.key, "data-visitors": b.visitors, "data-pageviews": b.pageviews },
        s("title", {}, text),
      ),
    );
  });
  return svg;
}

/** One minute of the realtime view. */
export interface MinuteBar {
  /** Start of the minute. */
  minute: Date;
  pageviews: number;
  visitors: number;
}

/** The last 30 minutes as bars of page views, oldest first. */
export function minuteBars(minutes: MinuteBar[]): SVGElement {
  const width = 300;
  const height = 64;
  const gap = 2;
  const bar = (width - gap * (minutes.length - 1)) / Math.max(minutes.length, 1);
  const max = Math.max(1, ...minutes.map((m) => m.pageviews));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", height, role: "img", "aria-label": "Page views per minute, last 30 minutes", class: "minutes" });
  const time = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit" });
  minutes.forEach((m, i) => {
    const h = Math.max(1, (m.pageviews / max) * (height - 2));
    svg.append(
      s(
        "rect",
        { x: i * (bar + gap), y: height - h, width: bar, height: h, class: m.pageviews ? "bar" : "bar empty", "data-minute": m.minute.toISOString(), "data-pageviews": m.pageviews, "data-visitors": m.visitors },
        s("title", {}, `${time.format(m.minute)}: ${count(m.pageviews)} page views, ${count(m.visitors)} visitors`),
      ),
    );
  });
  return svg;
}
