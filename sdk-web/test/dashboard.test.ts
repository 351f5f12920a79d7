// The dashboard that `tally serve` serves at `/`, in Debian's headless
// Chromium against a real server loaded with a generated data set. What the
// page shows is checked twice: against what the test computes from the data
// set itself, and against RunReport (and the other calls) made here with
// requests written out by hand. Screenshots of the main views go to
// test-results/screenshots/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { chromium, type Browser, type Page } from "playwright-core";
import {
  ComparisonMode,
  Dimension,
  EventType,
  MatchType,
  Metric,
  type RunReportRequest,
  type TallyClient,
} from "../src/index.js";
import { TallyServer } from "./server.js";

const SITE = "dash";
const SCREENSHOTS = new URL("../test-results/screenshots/", import.meta.url);
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// ---- the data set: visits over the last three weeks, a few today

const PAGES = ["/", "/pricing", "/docs", "/blog/hello", "/about"];
/** Where visits come from: a referrer, or tags on the landing URL. */
const ORIGINS = [
  { referrer: "https://www.google.com/search?q=tally", query: "" },
  { referrer: "https://news.ycombinator.com/item?id=1", query: "" },
  { referrer: "", query: "?utm_source=newsletter&utm_medium=email&utm_campaign=launch" },
  { referrer: "", query: "" },
  { referrer: "https://blog.example.org/post", query: "" },
];
const AGENTS = [
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
  "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
];

/** An event of the data set, as the test knows it. */
interface Hit {
  visit: number;
  visitor: string;
  ts: number;
  type: "pageview" | "custom";
  path: string;
  name: string;
  /** USD. */
  revenue?: number;
  plan?: string;
  origin: number;
  agent: number;
  first: boolean;
}

/** A small deterministic generator (mulberry32), so every run has the same data relative to today. */
function random(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const DAY = 86_400_000;
const midnight = (daysAgo: number) => {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  return d.getTime() - daysAgo * DAY;
};
/** The UTC date (the site's time zone) `n` days ago. */
const daysAgo = (n: number) => new Date(midnight(n)).toISOString().slice(0, 10);
const dayOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);

function generate(): Hit[] {
  const rand = random(42);
  const hits: Hit[] = [];
  let visit = 0;
  const addVisit = (start: number) => {
    visit++;
    const visitor = `v${rand(40)}`;
    const origin = rand(ORIGINS.length);
    const agent = rand(AGENTS.length);
    const pages = 1 + rand(4);
    let ts = start;
    let path = PAGES[0];
    for (let p = 0; p < pages; p++) {
      path = p == 0 ? PAGES[rand(3)] : PAGES[rand(PAGES.length)];
      hits.push({ visit, visitor, ts, type: "pageview", path, name: "pageview", origin, agent, first: p == 0 });
      ts += (10 + rand(80)) * 1000;
    }
    const plan = ["pro", "team"][rand(2)];
    if (rand(10) < 3) hits.push({ visit, visitor, ts, type: "custom", path, name: "signup", plan, origin, agent, first: false });
    if (rand(10) < 2) hits.push({ visit, visitor, ts: ts + 5000, type: "custom", path, name: "purchase", plan, revenue: 10 + rand(90) + 0.5, origin, agent, first: false });
  };
  for (let ago = 20; ago >= 1; ago--) {
    // One visit per slot, an hour apart: a visitor's visits never run into each other.
    const slots = 3 + rand(6);
    for (let slot = 0; slot < slots; slot++) addVisit(midnight(ago) + (8 + slot) * 3_600_000 + rand(20) * 60_000);
  }
  // Today: visits 12, 47, 82, ... minutes ago (the first one in the realtime window).
  for (let k = 0; k < 6; k++) addVisit(Date.now() - (12 + 35 * k) * 60_000);
  return hits.sort((a, b) => a.ts - b.ts);
}

/** The numbers of the hits of days [from, to], as the README defines them. */
function expected(hits: Hit[], from: string, to: string) {
  const inRange = hits.filter((h) => dayOf(h.ts) >= from && dayOf(h.ts) <= to);
  const visits = new Map<number, Hit[]>();
  for (const h of inRange) visits.set(h.visit, [...(visits.get(h.visit) ?? []), h]);
  const pageviews = inRange.filter((h) => h.type == "pageview");
  const bounced = [...visits.values()].filter((v) => v.filter((h) => h.type == "pageview").length <= 1 && !v.some((h) => h.type == "custom"));
  const durations = [...visits.values()].map((v) => (v[v.length - 1].ts - v[0].ts) / 1000);
  return {
    hits: inRange,
    visitors: new Set(inRange.map((h) => h.visitor)).size,
    visits: visits.size,
    pageviews: pageviews.length,
    viewsPerVisit: pageviews.length / visits.size,
    bounceRate: (100 * bounced.length) / visits.size,
    visitDuration: durations.reduce((a, b) => a + b, 0) / visits.size,
    revenue: inRange.reduce((sum, h) => sum + (h.revenue ?? 0), 0),
  };
}

/** Top pages as RunReport orders them: visitors, then the path. */
function topPages(hits: Hit[]): { value: string; numbers: number[] }[] {
  const paths = [...new Set(hits.map((h) => h.path))];
  return paths
    .map((path) => {
      const on = hits.filter((h) => h.path == path);
      return { value: path, numbers: [new Set(on.map((h) => h.visitor)).size, on.filter((h) => h.type == "pageview").length] };
    })
    .sort((a, b) => b.numbers[0] - a.numbers[0] || (a.value < b.value ? -1 : 1));
}

// ---- the server, the browser, and reading the page

let tally: TallyServer;
let browser: Browser;
let keys: { ingest: string; query: string };
let query: TallyClient["query"];
let hits: Hit[];

function toEvent(h: Hit) {
  const origin = ORIGINS[h.origin];
  return {
    eventId: crypto.randomUUID(),
    timestamp: timestampFromMs(h.ts),
    type: h.type == "pageview" ? EventType.PAGEVIEW : EventType.CUSTOM,
    name: h.type == "custom" ? h.name : "",
    url: `https://${SITE}.example${h.path}${h.first ? origin.query : ""}`,
    referrer: h.first ? origin.referrer : "",
    anonymousId: h.visitor,
    properties: h.plan ? { plan: { value: { case: "stringValue" as const, value: h.plan } } } : {},
    revenue: h.revenue ? { currencyCode: "USD", units: BigInt(Math.floor(h.revenue)), nanos: Math.round((h.revenue % 1) * 1e9) } : undefined,
    context: { userAgent: AGENTS[h.agent] },
  };
}

async function ingest(list: Hit[]): Promise<void> {
  const client = tally.client(keys.ingest).ingest;
  for (let i = 0; i < list.length; i += 500) {
    const batch = list.slice(i, i + 500);
    const answer = await client.track({ siteId: SITE, events: batch.map(toEvent) });
    assert.equal(answer.accepted, batch.length, JSON.stringify(answer.results.filter((r) => r.message)));
  }
}

before(async () => {
  tally = await TallyServer.start();
  keys = await tally.site(SITE);
  query = tally.client(keys.query).query;
  hits = generate();
  await ingest(hits);
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_FLAGS });
  mkdirSync(SCREENSHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await tally?.close();
});

/** Opens the dashboard at `search` (signed in with `key`, unless null) and waits until it shows that state. */
async function open(search: string, key: string | null = keys.query): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  if (key) await context.addInitScript((k) => sessionStorage.getItem("tally_key") ?? sessionStorage.setItem("tally_key", k), key);
  const page = await context.newPage();
  page.on("pageerror", (error) => assert.fail(`page error: ${error.message}`));
  await page.goto(`${tally.url}/${search}`);
  if (key) await settled(page);
  return page;
}

/** Waits until every request of the current state is answered and shown. */
async function settled(page: Page): Promise<void> {
  await page.waitForFunction(() => document.body.dataset.loaded == location.search && document.body.dataset.busy == "0");
}

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: new URL(`${name}.png`, SCREENSHOTS).pathname, fullPage: true });
}

/** The headline cards: value and change by metric. */
async function headline(page: Page): Promise<Record<string, { value: number; change?: number; text: string }>> {
  return page.$$eval(".metric", (cards) =>
    Object.fromEntries(
      cards.map((c) => {
        const card = c as HTMLElement;
        const change = card.dataset.change;
        return [card.dataset.metric, { value: Number(card.dataset.value), change: change == null ? undefined : Number(change), text: card.querySelector(".value")!.textContent! }];
      }),
    ),
  );
}

/** The rows a table card shows: the value and the numbers. */
async function tableRows(page: Page, card: string): Promise<{ value: string; numbers: number[] }[]> {
  return page.$$eval(`[data-card=${card}] tbody tr`, (rows) =>
    rows.map((r) => ({
      value: (r as HTMLElement).dataset.value!,
      numbers: [...r.querySelectorAll("td[data-value]")].map((td) => Number((td as HTMLElement).dataset.value)),
    })),
  );
}

// ---- requests written out here, independently of the dashboard's code

type Request = Partial<Omit<RunReportRequest, "$typeName">> & Record<string, unknown>;
const RANGES = {
  "30d": { startDate: "29daysAgo", endDate: "today" },
  "7d": { startDate: "6daysAgo", endDate: "today" },
  today: { startDate: "today", endDate: "today" },
};
const standard = (dimension: Dimension) => ({ kind: { case: "standard" as const, value: dimension } });
const exact = (dimension: ReturnType<typeof standard> | { kind: { case: "property"; value: string } }, value: string) => ({
  expr: {
    case: "filter" as const,
    value: { dimension, condition: { case: "stringMatch" as const, value: { matchType: MatchType.EXACT, value, caseSensitive: true } } },
  },
});
const isSet = (dimension: { kind: { case: "property"; value: string } }) => ({
  expr: { case: "filter" as const, value: { dimension, condition: { case: "isSet" as const, value: true } } },
});
const and = (...expressions: object[]) =>
  expressions.length == 0 ? undefined : expressions.length == 1 ? expressions[0] : { expr: { case: "andGroup" as const, value: { expressions } } };

async function report(request: Request) {
  return query.runReport({ siteId: SITE, ...request } as never);
}

function number(value: { case: string | undefined; value?: unknown }): number {
  return value.case == "intValue" ? Number(value.value) : Number(value.value ?? 0);
}

const HEADLINE_METRICS: [string, Metric][] = [
  ["visitors", Metric.VISITORS],
  ["visits", Metric.VISITS],
  ["pageviews", Metric.PAGEVIEWS],
  ["views_per_visit", Metric.VIEWS_PER_VISIT],
  ["bounce_rate", Metric.BOUNCE_RATE],
  ["visit_duration", Metric.VISIT_DURATION],
  ["revenue", Metric.REVENUE],
];

/** Asserts the headline cards equal RunReport for the same range and filter, with the previous period's change. */
async function assertHeadline(page: Page, range: object, filter?: object): Promise<void> {
  const answer = await report({
    metrics: HEADLINE_METRICS.map(([, m]) => m),
    dateRanges: [range],
    filter,
    comparison: ComparisonMode.PREVIOUS_PERIOD,
    revenueCurrency: "USD",
  } as Request);
  const shown = await headline(page);
  HEADLINE_METRICS.forEach(([key], i) => {
    const value = answer.totals[0].metricValues[i];
    assert.equal(shown[key].value, number(value.value), `${key}: the card shows RunReport's value`);
    assert.equal(shown[key].change, value.comparison?.change, `${key}: the card shows RunReport's change`);
  });
}

/** Asserts the headline cards equal the numbers computed from the data set. */
function assertComputed(shown: Awaited<ReturnType<typeof headline>>, want: ReturnType<typeof expected>, scope: string): void {
  assert.equal(shown.visitors.value, want.visitors, `${scope}: visitors`);
  assert.equal(shown.visits.value, want.visits, `${scope}: visits`);
  assert.equal(shown.pageviews.value, want.pageviews, `${scope}: page views`);
  assert.ok(Math.abs(shown.views_per_visit.value - want.viewsPerVisit) < 1e-9, `${scope}: views per visit`);
  assert.ok(Math.abs(shown.bounce_rate.value - want.bounceRate) < 1e-9, `${scope}: bounce rate`);
  assert.ok(Math.abs(shown.visit_duration.value - want.visitDuration) < 1e-6, `${scope}: visit duration`);
  assert.ok(Math.abs(shown.revenue.value - want.revenue) < 1e-9, `${scope}: revenue`);
  assert.equal(shown.visitors.text, want.visitors.toLocaleString("en-US"));
  assert.equal(shown.pageviews.text, want.pageviews.toLocaleString("en-US"));
}

/** Every table of the overview: card, tab, the request's dimension, metrics and extra condition. */
const TABLES: { card: string; tab?: string; dimension: ReturnType<typeof standard> | { kind: { case: "property"; value: string } }; metrics: Metric[]; extra?: object }[] = [
  { card: "pages", tab: "page", dimension: standard(Dimension.PAGE), metrics: [Metric.VISITORS, Metric.PAGEVIEWS] },
  { card: "pages", tab: "entry", dimension: standard(Dimension.ENTRY_PAGE), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "pages", tab: "exit", dimension: standard(Dimension.EXIT_PAGE), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "sources", tab: "source", dimension: standard(Dimension.SOURCE), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "sources", tab: "medium", dimension: standard(Dimension.MEDIUM), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "sources", tab: "campaign", dimension: standard(Dimension.CAMPAIGN), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "countries", dimension: standard(Dimension.COUNTRY), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "devices", tab: "device", dimension: standard(Dimension.DEVICE_TYPE), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "devices", tab: "browser", dimension: standard(Dimension.BROWSER), metrics: [Metric.VISITORS, Metric.VISITS] },
  { card: "devices", tab: "os", dimension: standard(Dimension.OS), metrics: [Metric.VISITORS, Metric.VISITS] },
  {
    card: "events",
    dimension: standard(Dimension.EVENT_NAME),
    metrics: [Metric.VISITORS, Metric.EVENTS],
    extra: exact(standard(Dimension.EVENT_TYPE), "custom"),
  },
  {
    card: "props",
    dimension: { kind: { case: "property", value: "plan" } },
    metrics: [Metric.VISITORS, Metric.EVENTS],
    extra: isSet({ kind: { case: "property", value: "plan" } }),
  },
];

/** Asserts every table (clicking through the tabs) shows RunReport's first rows for the range and filters. */
async function assertTables(page: Page, range: object, filters: object[] = []): Promise<void> {
  for (const t of TABLES) {
    if (t.tab) {
      await page.click(`[data-card=${t.card}] [data-tab=${t.tab}]`);
      await settled(page);
    }
    const answer = await report({
      metrics: t.metrics,
      dimensions: [t.dimension],
      dateRanges: [range],
      filter: and(...filters, ...(t.extra ? [t.extra] : [])),
      limit: 10n,
    } as Request);
    const want = answer.rows.map((row) => ({ value: row.dimensionValues[0], numbers: row.metricValues.map((v) => number(v.value)) }));
    assert.ok(want.length > 0 || t.card == "countries" || filters.length > 0, `${t.card}/${t.tab}: the data set has rows`);
    assert.deepEqual(await tableRows(page, t.card), want, `${t.card}/${t.tab ?? ""}: the table shows RunReport's rows`);
  }
  // Back to the first tabs.
  for (const card of ["pages", "sources", "devices"]) await page.click(`[data-card=${card}] [role=tab]:first-child`);
  await settled(page);
}

// ---- the tests

test("signing in: a wrong key is refused; the key stays in the tab's session, the site in the URL", async () => {
  const page = await open("", null);
  await page.waitForSelector("form.signin");
  await screenshot(page, "signin");
  await page.fill("input[name=key]", "tly_qry_not-a-key");
  await page.fill("input[name=site]", SITE);
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector(".signin .error")!.textContent!.includes("unknown"));

  await page.fill("input[name=key]", keys.query);
  await page.fill("input[name=site]", "another-site");
  await page.click("button[type=submit]");
  await page.waitForFunction(() => document.querySelector(".signin .error")!.textContent!.includes("cannot read"));

  await page.fill("input[name=site]", SITE);
  await page.click("button[type=submit]");
  await settled(page);
  assert.equal(new URL(page.url()).search, `?site=${SITE}`);
  assert.ok(!page.url().includes(keys.query), "the key is never in the URL");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("tally_key")), keys.query);
  assert.deepEqual(await page.evaluate(() => JSON.parse(localStorage.getItem("tally_sites")!)), [SITE]);

  await page.click("text=Sign out");
  await page.waitForSelector("form.signin");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("tally_key")), null);
  assert.equal(await page.inputValue("input[name=site]"), SITE, "the site stays filled in");
  await page.context().close();
});

test("the headline numbers equal RunReport and the data set, with the change against the previous period", async () => {
  const page = await open(`?site=${SITE}`);
  await screenshot(page, "overview");
  await assertHeadline(page, RANGES["30d"]);
  const shown = await headline(page);
  assertComputed(shown, expected(hits, daysAgo(29), daysAgo(0)), "30 days");
  // Nothing is older than 30 days: no change to show.
  assert.equal(shown.visitors.change, undefined);
  assert.match(await page.textContent("[data-metric=visitors] .change") ?? "", /no data before/);

  await page.click("[data-period='7d']");
  await settled(page);
  assert.equal(new URL(page.url()).searchParams.get("period"), "7d");
  await assertHeadline(page, RANGES["7d"]);
  const week = await headline(page);
  const now = expected(hits, daysAgo(6), daysAgo(0));
  const before = expected(hits, daysAgo(13), daysAgo(7));
  assertComputed(week, now, "7 days");
  assert.ok(Math.abs(week.pageviews.change! - (now.pageviews - before.pageviews) / before.pageviews) < 1e-9, "page views change");
  assert.ok(Math.abs(week.visitors.change! - (now.visitors - before.visitors) / before.visitors) < 1e-9, "visitors change");
  await page.context().close();
});

test("the chart has a point per day (per hour today) with RunReport's visitors and page views", async () => {
  for (const [period, range, dimension, points] of [
    ["30d", RANGES["30d"], Dimension.TIME_DAY, 30],
    ["today", RANGES.today, Dimension.TIME_HOUR, 24],
  ] as const) {
    const page = await open(`?site=${SITE}&period=${period}`);
    const answer = await report({ metrics: [Metric.VISITORS, Metric.PAGEVIEWS], dimensions: [standard(dimension)], dateRanges: [range] } as Request);
    const buckets = await page.$$eval("svg.series rect.hover", (rects) =>
      rects.map((r) => [r.getAttribute("data-bucket"), Number(r.getAttribute("data-visitors")), Number(r.getAttribute("data-pageviews"))] as const),
    );
    assert.equal(buckets.length, points, `${period}: one point per bucket`);
    const want = new Map(answer.rows.map((row) => [row.dimensionValues[0], [number(row.metricValues[0].value), number(row.metricValues[1].value)]]));
    assert.ok(want.size > 0);
    for (const [key, visitors, pageviews] of buckets) assert.deepEqual([visitors, pageviews], want.get(key!) ?? [0, 0], `${period} ${key}`);
    // And the page views per day are those of the data set.
    if (period == "30d") {
      for (const [key, , pageviews] of buckets) {
        assert.equal(pageviews, hits.filter((h) => h.type == "pageview" && dayOf(h.ts) == key).length, key!);
      }
    }
    await page.context().close();
  }
});

test("every table's first rows equal RunReport's, and top pages those of the data set", async () => {
  const page = await open(`?site=${SITE}&period=7d`);
  await assertTables(page, RANGES["7d"]);
  const want = topPages(expected(hits, daysAgo(6), daysAgo(0)).hits);
  assert.deepEqual(await tableRows(page, "pages"), want.slice(0, 10));
  await page.context().close();
});

test("clicking a row filters every report; the filter is a chip and part of the URL", async () => {
  const page = await open(`?site=${SITE}`);
  await page.click("[data-card=pages] tbody tr[data-value='/pricing']");
  await settled(page);
  const url = new URL(page.url());
  assert.deepEqual(url.searchParams.getAll("f"), ["page:/pricing"]);
  assert.equal(await page.textContent(".chip"), "Page is /pricing \u00d7");
  await screenshot(page, "filtered");

  // Only events on /pricing count: its page views, the visitors who saw it.
  const pricing = expected(hits, daysAgo(29), daysAgo(0)).hits.filter((h) => h.path == "/pricing");
  const shown = await headline(page);
  assert.equal(shown.pageviews.value, pricing.filter((h) => h.type == "pageview").length);
  assert.equal(shown.visitors.value, new Set(pricing.map((h) => h.visitor)).size);
  const filter = exact(standard(Dimension.PAGE), "/pricing");
  await assertHeadline(page, RANGES["30d"], filter);
  await assertTables(page, RANGES["30d"], [filter]);

  // A second filter, from another table, narrows further.
  await page.click(`[data-card=devices] [data-tab=browser]`);
  await settled(page);
  const [topBrowser] = await tableRows(page, "devices");
  await page.click(`[data-card=devices] tbody tr[data-value='${topBrowser.value}']`);
  await settled(page);
  assert.deepEqual(new URL(page.url()).searchParams.getAll("f"), ["page:/pricing", `browser:${topBrowser.value}`]);
  await assertHeadline(page, RANGES["30d"], and(filter, exact(standard(Dimension.BROWSER), topBrowser.value)));

  // The URL is the view: opened elsewhere it shows the same numbers.
  const shared = await open(new URL(page.url()).search);
  assert.deepEqual(await headline(shared), await headline(page));
  await shared.context().close();

  // Removing the chips brings the whole site back.
  await page.click(".chip[data-dim=browser]");
  await settled(page);
  await page.click(".chip[data-dim=page]");
  await settled(page);
  assert.deepEqual(new URL(page.url()).searchParams.getAll("f"), []);
  assertComputed(await headline(page), expected(hits, daysAgo(29), daysAgo(0)), "unfiltered");
  await page.context().close();
});

test("changing the date range changes the numbers: presets, a custom range, back and forward", async () => {
  const page = await open(`?site=${SITE}`);
  await page.click("[data-period=today]");
  await settled(page);
  const today = expected(hits, daysAgo(0), daysAgo(0));
  const shown = await headline(page);
  assert.equal(shown.pageviews.value, today.pageviews);
  assert.equal(shown.visitors.value, today.visitors);
  await assertHeadline(page, RANGES.today);

  // A custom range: the busiest day of the data set, alone, then a three-day span.
  const day = daysAgo(3);
  await page.click("[data-period=custom]");
  await page.fill("input[aria-label=From]", day);
  await page.fill("input[aria-label=To]", day);
  await page.click("form.custom button[type=submit]");
  await settled(page);
  const url = new URL(page.url()).searchParams;
  assert.deepEqual([url.get("period"), url.get("from"), url.get("to")], ["custom", day, day]);
  assertComputed(await headline(page), expected(hits, day, day), day);
  await assertHeadline(page, { startDate: day, endDate: day });
  assert.equal(await page.locator("svg.series rect.hover").count(), 24, "one day: hours");

  await page.fill("input[aria-label=From]", daysAgo(5));
  await page.click("form.custom button[type=submit]");
  await settled(page);
  assertComputed(await headline(page), expected(hits, daysAgo(5), day), "three days");
  assert.equal(await page.locator("svg.series rect.hover").count(), 3);

  // Back goes to the previous view, numbers and all.
  await page.goBack();
  await settled(page);
  assertComputed(await headline(page), expected(hits, day, day), "back");
  await page.context().close();
});

test("the realtime panel follows WatchRealtime as events arrive", async () => {
  const page = await open(`?site=${SITE}`);
  await page.waitForFunction(() => document.querySelector<HTMLElement>(".realtime")!.dataset.snapshots);
  const read = () =>
    page.$eval(".realtime", (panel) => ({
      active: Number((panel as HTMLElement).dataset.active),
      pageviews: Number((panel as HTMLElement).dataset.pageviews),
      bars: panel.querySelectorAll("svg.minutes rect").length,
      text: panel.querySelector(".active")!.textContent,
    }));
  const start = await read();
  assert.equal(start.bars, 30);
  const snapshot = await query.runRealtimeReport({ siteId: SITE });
  assert.equal(start.active, Number(snapshot.activeVisitors));

  // Three new visitors, four page views, now.
  const now = Date.now();
  const fresh: Hit[] = ["live-1", "live-2", "live-3", "live-3"].map((visitor, i) => ({
    visit: 10_000 + Math.min(i, 2),
    visitor,
    ts: now - 1000 + i,
    type: "pageview",
    path: "/live",
    name: "pageview",
    origin: 3,
    agent: 0,
    first: i < 3,
  }));
  await ingest(fresh);
  await page.waitForFunction((want) => Number(document.querySelector<HTMLElement>(".realtime")!.dataset.active) == want, start.active + 3, {
    timeout: 5000,
  });
  const end = await read();
  assert.equal(end.pageviews, start.pageviews + 4);
  assert.equal(end.text, String(start.active + 3));
  const last = await page.$$eval("svg.minutes rect", (rects) => Number(rects[rects.length - 1].getAttribute("data-pageviews")));
  assert.ok(last >= 4, "the current minute's bar counts the new page views");
  const after = await query.runRealtimeReport({ siteId: SITE });
  assert.equal(end.active, Number(after.activeVisitors));
  assert.equal(end.pageviews, after.minutes.reduce((sum, m) => sum + Number(m.pageviews), 0));
  assert.ok(await page.isVisible(".realtime .now >> text=/live"));
  await screenshot(page, "realtime");
  hits.push(...fresh);
  await page.context().close();
});

test("the funnel view shows RunFunnelReport's steps", async () => {
  const page = await open(`?site=${SITE}&view=funnel`);
  const inputs = page.locator("input[name=step]");
  await inputs.nth(0).fill("/");
  await inputs.nth(1).fill("/pricing");
  await inputs.nth(2).fill("signup");
  await page.click("form.funnel-form button[type=submit]");
  await settled(page);
  assert.deepEqual(new URL(page.url()).searchParams.getAll("step"), ["/", "/pricing", "signup"]);
  const shown = await page.$$eval(".funnel-steps li", (steps) => steps.map((s) => [(s as HTMLElement).dataset.step, Number((s as HTMLElement).dataset.visitors)]));
  const answer = await query.runFunnelReport({
    siteId: SITE,
    dateRange: RANGES["30d"],
    steps: [
      { name: "/", match: { case: "page", value: { matchType: MatchType.EXACT, value: "/", caseSensitive: true } } },
      { name: "/pricing", match: { case: "page", value: { matchType: MatchType.EXACT, value: "/pricing", caseSensitive: true } } },
      { name: "signup", match: { case: "eventName", value: "signup" } },
    ],
    conversionWindow: { seconds: 7n * 86_400n },
  });
  assert.deepEqual(shown, answer.steps.map((s) => [s.name, Number(s.visitors)]));
  // The first step: every visitor who saw the home page in the range.
  const home = expected(hits, daysAgo(29), daysAgo(0)).hits.filter((h) => h.path == "/" && h.type == "pageview");
  assert.equal(shown[0][1], new Set(home.map((h) => h.visitor)).size);
  assert.ok((shown[2][1] as number) > 0, "some visitors signed up");
  await screenshot(page, "funnel");
  await page.context().close();
});

test("the session explorer lists ListSessions' visits and shows one with GetSession's events", async () => {
  const page = await open(`?site=${SITE}&view=sessions&period=7d`);
  const week = expected(hits, daysAgo(6), daysAgo(0));
  assert.equal(Number(await page.getAttribute(".sessions .count", "data-value")), week.visits);
  const listed = await page.$$eval(".sessions tbody tr", (rows) => rows.map((r) => (r as HTMLElement).dataset.session!));
  const answer = await tally.client(keys.query).session.listSessions({
    siteId: SITE,
    timeRange: { startTime: timestampFromMs(midnight(6)), endTime: timestampFromMs(midnight(-1)) },
    pageSize: 50,
  });
  assert.deepEqual(listed, answer.sessions.map((s) => s.sessionId));
  assert.equal(listed.length, Math.min(50, week.visits));

  await page.click(`.sessions tbody tr[data-session='${listed[0]}']`);
  await settled(page);
  assert.equal(new URL(page.url()).searchParams.get("session"), listed[0]);
  await page.waitForSelector(".timeline li");
  const shown = await page.$$eval(".timeline li", (items) => items.map((i) => [(i as HTMLElement).dataset.name, (i as HTMLElement).dataset.path]));
  const visit = await tally.client(keys.query).session.getSession({ siteId: SITE, sessionId: listed[0] });
  assert.deepEqual(shown, visit.recordedEvents.map((e) => [e.name, e.path]));
  await screenshot(page, "sessions");

  // Closing the visit keeps the list as it was.
  await page.click(".session >> text=Close");
  await settled(page);
  assert.equal(new URL(page.url()).searchParams.get("session"), null);
  assert.ok(await page.isHidden(".session"));
  assert.deepEqual(await page.$$eval(".sessions tbody tr", (rows) => rows.map((r) => (r as HTMLElement).dataset.session!)), listed);
  await page.context().close();
});

test("the first view is interactive well under a second on localhost", async () => {
  // Five cold loads (a new browser context each: nothing cached); the best
  // one counts, since the machine running the tests may be busy with others.
  const times: number[] = [];
  for (let run = 0; run < 5; run++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    await context.addInitScript((k) => sessionStorage.setItem("tally_key", k), keys.query);
    const page = await context.newPage();
    const started = Date.now();
    await page.goto(`${tally.url}/?site=${SITE}&period=7d`);
    await settled(page);
    const wall = Date.now() - started;
    // performance.now() when every number of the first view was on screen, from navigation start.
    const firstView = Number(await page.evaluate(() => document.body.dataset.firstView));
    const requests = await page.evaluate(() =>
      performance.getEntriesByType("resource").map((e) => `${e.name.split("/").pop()} ${Math.round(e.startTime)}-${Math.round(e.responseEnd)}`),
    );
    console.log(`first view: ${firstView} ms in the page (navigation start to every number shown), ${wall} ms from goto; ${requests.join(", ")}`);
    times.push(firstView);
    if (run == 4) {
      // A later visit: the page revalidated (304), the script from the cache.
      await page.goto(`${tally.url}/?site=${SITE}&period=30d`);
      await settled(page);
      console.log(`next visit: ${await page.evaluate(() => document.body.dataset.firstView)} ms in the page`);
    }
    await context.close();
  }
  console.log(`first view: best ${Math.min(...times)} ms of ${times.join(", ")} ms`);
  assert.ok(Math.min(...times) < 1000, `first view took ${times.join(", ")} ms`);
});
