// The dashboard's pure parts (URL state, requests, time buckets, number
// formats), its bundle size, and that the server embeds this build of it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { ComparisonMode, Dimension, MatchType } from "../src/index.js";
import * as fmt from "../dashboard/format.js";
import { filterExpression, formatState, overviewRequest, parseState, seriesDimension, tableRequest, CARDS } from "../dashboard/state.js";
import { timeKeys } from "../dashboard/time.js";
import { niceMax } from "../dashboard/chart.js";

test("the state round-trips through the query string; defaults stay out of it", () => {
  const search =
    "?site=example.com&view=funnel&period=custom&from=2026-11-01&to=2026-11-07&compare=0&f=page%3A%2Fpricing&f=prop.plan%3Apro&f=source%3A&pages=entry&prop=plan&cur=EUR&step=%2F&step=signup&window=24";
  const state = parseState(search);
  assert.deepEqual(state.filters, [
    { dim: "page", value: "/pricing" },
    { dim: "prop.plan", value: "pro" },
    { dim: "source", value: "" },
  ]);
  assert.equal(state.period, "custom");
  assert.equal(state.compare, false);
  assert.deepEqual(state.steps, ["/", "signup"]);
  assert.equal(formatState(state), search);
  assert.equal(formatState(parseState("?site=a")), "?site=a");
  assert.equal(formatState(parseState("")), "");
});

test("malformed URL parts fall back to defaults", () => {
  const state = parseState("?period=custom&from=2026-11-07&to=2026-11-01&f=nonsense:1&f=nocolon&cur=euro&window=-3&pages=os&view=admin");
  assert.equal(state.period, "30d", "a custom range must be two days in order");
  assert.deepEqual(state.filters, []);
  assert.equal(state.currency, "USD");
  assert.equal(state.window, 168);
  assert.deepEqual(state.tabs, {}, "os is not a tab of the pages card");
  assert.equal(state.view, "overview");
});

test("filters become one exact, case-sensitive condition each; the empty value means not set", () => {
  assert.equal(filterExpression([]), undefined);
  assert.deepEqual(filterExpression([{ dim: "page", value: "/a" }]), {
    expr: {
      case: "filter",
      value: {
        dimension: { kind: { case: "standard", value: Dimension.PAGE } },
        condition: { case: "stringMatch", value: { matchType: MatchType.EXACT, value: "/a", caseSensitive: true } },
      },
    },
  });
  const both = filterExpression([
    { dim: "prop.plan", value: "pro" },
    { dim: "campaign", value: "" },
  ]);
  assert.equal(both?.expr?.case, "andGroup");
  const [prop, campaign] = (both!.expr!.value as { expressions: { expr: { value: { dimension: unknown; condition: unknown } } }[] }).expressions;
  assert.deepEqual(prop.expr.value.dimension, { kind: { case: "property", value: "plan" } });
  assert.deepEqual(campaign.expr.value.condition, { case: "isSet", value: false });
});

test("requests: the headline and chart compare with the previous period, tables do not", () => {
  const state = parseState("?site=s&period=7d");
  const headline = overviewRequest(state);
  assert.deepEqual(headline.dateRanges, [{ startDate: "6daysAgo", endDate: "today" }]);
  assert.deepEqual(headline.dimensions, [{ kind: { case: "standard", value: Dimension.TIME_DAY } }]);
  assert.equal(headline.comparison, ComparisonMode.PREVIOUS_PERIOD);
  assert.equal(overviewRequest(parseState("?site=s&compare=0")).comparison, ComparisonMode.UNSPECIFIED);
  const table = tableRequest(state, CARDS[0].tabs[0]);
  assert.equal(table.comparison, ComparisonMode.UNSPECIFIED);
  assert.equal(table.limit, 10n);
  assert.equal(seriesDimension(parseState("?period=today")), Dimension.TIME_HOUR);
  assert.equal(seriesDimension(parseState("?period=custom&from=2026-01-01&to=2026-01-01")), Dimension.TIME_HOUR);
  assert.equal(seriesDimension(parseState("?period=custom&from=2026-01-01&to=2026-03-31")), Dimension.TIME_DAY);
  assert.equal(seriesDimension(parseState("?period=custom&from=2026-01-01&to=2026-12-31")), Dimension.TIME_WEEK);
});

test("time buckets follow the time zone, across a daylight saving change", () => {
  // 2026-03-29 in Berlin has 23 hours (02:00 is skipped).
  const start = new Date("2026-03-28T23:00:00Z");
  const end = new Date("2026-03-29T22:00:00Z");
  const hours = timeKeys(start, end, "Europe/Berlin", Dimension.TIME_HOUR);
  assert.equal(hours.length, 23);
  assert.deepEqual(hours.slice(0, 3).map((k) => k.key), ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T03:00"]);
  const days = timeKeys(new Date("2026-11-01T00:00:00Z"), new Date("2026-11-08T00:00:00Z"), "UTC", Dimension.TIME_DAY);
  assert.deepEqual(days.map((d) => d.key), ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05", "2026-11-06", "2026-11-07"]);
  assert.equal(days[0].label, "Nov 1");
  const weeks = timeKeys(new Date("2026-11-01T00:00:00Z"), new Date("2026-11-10T00:00:00Z"), "UTC", Dimension.TIME_WEEK);
  assert.deepEqual(weeks.map((w) => w.key), ["2026-10-26", "2026-11-02", "2026-11-09"]);
});

test("numbers read as counts, durations, percentages, money and changes", () => {
  assert.equal(fmt.count(1234567), "1,234,567");
  assert.equal(fmt.duration(42.4), "42s");
  assert.equal(fmt.duration(187), "3m 07s");
  assert.equal(fmt.duration(7500), "2h 05m");
  assert.equal(fmt.percent(42.456), "42.5%");
  assert.equal(fmt.money(1234.5, "USD"), "$1,234.50");
  assert.equal(fmt.money(5, "EUR"), "\u20ac5.00");
  assert.equal(fmt.change(0.254), "+25%");
  assert.equal(fmt.change(-0.08), "\u22128%");
  assert.equal(fmt.change(0.001), "0%");
});

test("the chart's axis ends at a round number with four whole steps", () => {
  assert.deepEqual([0, 1, 3, 4, 5, 23, 50, 99, 1234].map(niceMax), [4, 4, 4, 4, 8, 24, 60, 100, 1600]);
});

const BUDGET = 64 * 1024;

test(`the dashboard stays under ${BUDGET / 1024} KB gzipped`, () => {
  const size = (file: string) => gzipSync(readFileSync(new URL(`../dist/dashboard/${file}`, import.meta.url)), { level: 9 }).length;
  const [page, script] = [size("index.html"), size("dashboard.js")];
  console.log(`dashboard: index.html ${page} + dashboard.js ${script} = ${page + script} bytes gzipped`);
  assert.ok(page + script <= BUDGET, `${page + script} bytes gzipped, over the ${BUDGET}-byte budget`);
});

test("the server embeds this build of the dashboard", () => {
  for (const file of ["index.html", "dashboard.js"]) {
    const built = readFileSync(new URL(`../dist/dashboard/${file}`, import.meta.url), "utf8");
    const embedded = readFileSync(new URL(`../../server/assets/dashboard/${file}`, import.meta.url), "utf8");
    assert.ok(built == embedded, `server/assets/dashboard/${file} is stale: run \`npm run asset\` in sdk-web`);
  }
});
