// The time buckets of a report's range in the report's time zone, keyed as
// the API writes time dimension values, so the chart has a point for every
// bucket, also those without events. No DOM here.
import { Dimension } from "../src/gen/tally/v1/query_pb.js";

/** A time bucket: the API's value for it and a short label. */
export interface TimeKey {
  key: string;
  label: string;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/**
 * Every hour, day or ISO week (`dimension`) that [start, end) touches in
 * `timeZone`, in order. Steps by the hour, so daylight saving changes and
 * half-hour offsets fall where they fall.
 */
export function timeKeys(start: Date, end: Date, timeZone: string, dimension: Dimension): TimeKey[] {
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    hourCycle: "h23",
  });
  const keys: TimeKey[] = [];
  const seen = new Set<string>();
  for (let t = start.getTime(); t < end.getTime(); t += 3_600_000) {
    const p = Object.fromEntries(parts.formatToParts(new Date(t)).map((part) => [part.type, part.value]));
    const day = `${p.year}-${p.month}-${p.day}`;
    let key: string;
    let label: string;
    if (dimension == Dimension.TIME_HOUR) {
      key = `${day}T${p.hour}:00`;
      label = `${p.hour}:00`;
    } else if (dimension == Dimension.TIME_WEEK) {
      key = monday(day);
      label = dayLabel(key);
    } else {
      key = day;
      label = dayLabel(day);
    }
    if (!seen.has(key)) {
      seen.add(key);
      keys.push({ key, label });
    }
  }
  return keys;
}

/** "2026-11-20" -> "Nov 20". */
export function dayLabel(day: string): string {
  const [, month, date] = day.split("-").map(Number);
  return `${MONTHS[month - 1]} ${date}`;
}

/** The Monday (YYYY-MM-DD) of the ISO week of a day. */
export function monday(day: string): string {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() - ((date.getUTCDay() + 6) % 7));
  return date.toISOString().slice(0, 10);
}
