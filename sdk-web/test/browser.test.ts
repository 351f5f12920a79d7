// The tracker and the client in Debian's headless Chromium: pages served from
// one loopback origin load the tracker from the real server on another, so
// every request crosses origins (CORS).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { fromBinary } from "@bufbuild/protobuf";
import { build } from "esbuild";
import { chromium, type Browser, type BrowserContext, type LaunchOptions, type Page } from "playwright-core";
import {
  Code,
  Dimension,
  EventType,
  Metric,
  TrackRequestSchema,
  TrackResponseSchema,
  Verdict,
  type Event,
} from "../src/index.js";
import { MAX_QUEUE, OPT_OUT, type Tracker } from "../src/tracker.js";
import type { WireEvent } from "../src/wire.js";
import { countsBy, TallyServer } from "./server.js";

declare global {
  interface Window {
    tally?: Tracker;
    /** `persisted` of each pageshow event the page saw (set by a test's init script). */
    shows?: boolean[];
    /** Hands the tracker the answer to its `index`th Track request (set by a test's init script). */
    release?: (index: number) => void;
  }
}

// A desktop browser's user agent: HeadlessChrome would be flagged as a bot and left out of reports.
const USER_AGENT =
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // For the whole browser, not per context: a keepalive request that outlives
  // its page goes out without the context's user agent override.
  `--user-agent=${USER_AGENT}`,
];
const QUEUE = "tally_queue";

let tally: TallyServer;
let site: Server;
let origin: string;
let browser: Browser;
let keys: { ingest: string; query: string };
// Tracker tags by the first segment of the page's path; other paths get the default tag.
const tags = new Map<string, string>();
// Paths /api/<name>/... are a proxy in front of the Tally server: it answers
// with the HTTP status set here for <name>, or forwards the request.
const failing = new Map<string, number>();

/** A tracker script tag with these data attributes. */
function trackerTag(data: Record<string, string>): string {
  const attributes = Object.entries(data).map(([name, value]) => ` data-${name}="${value}"`);
  return `<script defer${attributes.join("")} src="${tally.url}/tally.js"></script>`;
}

/** An app page: links to another host, to a file and to the next page of the app, and the tracker. */
function appPage(tag: string): string {
  return `<!doctype html><title>app</title>
<a id="out" href="${elsewhere()}">out</a>
<a id="file" href="/files/report.pdf">file</a>
<a id="next" href="next">next</a>
${tag}`;
}

/**
 * A page on another host: the same test server under the name localhost. (Not
 * a routed fake host: with request interception on, Chromium drops keepalive
 * requests that outlive their page.)
 */
function elsewhere(): string {
  return `${origin.replace("127.0.0.1", "localhost")}/plain?q=1`;
}

before(async () => {
  tally = await TallyServer.start();
  keys = await tally.site("browser");
  const realtime = await build({ entryPoints: ["test/pages/realtime.ts"], bundle: true, write: false, format: "esm" });
  const defaultTag = trackerTag({ site: "browser", key: keys.ingest });
  const pages: Record<string, [string, string]> = {
    "/realtime.js": ["text/javascript", realtime.outputFiles[0].text],
    "/realtime.html": ["text/html", `<ul id="pages"></ul><script type="module" src="/realtime.js"></script>`],
    "/plain": ["text/html", "<!doctype html><title>no tracker</title>"],
  };
  site = createServer(async (req, res) => {
    const path = new URL(req.url!, "http://x").pathname;
    if (path.startsWith("/api/")) {
      const [, , name, ...rest] = path.split("/");
      const status = failing.get(name);
      if (status) {
        res.writeHead(status, { "content-type": "text/plain" }).end(`status ${status}`);
        return;
      }
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk);
      const forwarded = ["content-type", "x-grpc-web", "authorization"].map((h) => [h, String(req.headers[h])]);
      const upstream = await fetch(`${tally.url}/${rest.join("/")}`, {
        method: req.method,
        headers: Object.fromEntries(forwarded),
        body: Buffer.concat(chunks),
      });
      const headers: Record<string, string> = {};
      upstream.headers.forEach((value, name) => {
        if (!["content-length", "content-encoding", "transfer-encoding"].includes(name)) headers[name] = value;
      });
      res.writeHead(upstream.status, headers).end(Buffer.from(await upstream.arrayBuffer()));
      return;
    }
    if (path.startsWith("/files/")) {
      res.writeHead(200, { "content-type": "application/pdf", "content-disposition": "attachment" }).end("%PDF-1.4");
      return;
    }
    // Any other path is an app page with the tracker (SPA routes are served the same page).
    const tag = tags.get(path.split("/")[1]) ?? defaultTag;
    const [type, body] = pages[path] ?? ["text/html", appPage(tag)];
    res.writeHead(200, { "content-type": type }).end(body);
  });
  await new Promise<void>((done) => site.listen(0, "127.0.0.1", done));
  origin = `http://127.0.0.1:${(site.address() as { port: number }).port}`;
  browser = await launch();
});

/** Starts Chromium; `options` may add to Playwright's launch options. */
function launch(options: LaunchOptions = {}): Promise<Browser> {
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_FLAGS, ...options });
}

after(async () => {
  await browser?.close();
  site?.close();
  await tally?.close();
});

/** Opens `path` of the test origin, in `context` or a fresh one, and waits for the tracker. */
async function open(path: string, context?: BrowserContext): Promise<Page> {
  const page = await (context ?? (await browser.newContext())).newPage();
  await page.goto(`${origin}${path}`);
  await page.waitForFunction(() => window.tally);
  return page;
}

/** Polls `read` until it deep-equals `expected` (10 s at most). */
async function eventually<T>(read: () => Promise<T>, expected: T): Promise<void> {
  let last: T | undefined;
  for (let i = 0; i < 100; i++) {
    last = await read();
    try {
      return assert.deepEqual(last, expected);
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  assert.deepEqual(last, expected);
}

const pages = () => countsBy(tally.client(keys.query), "browser", Dimension.PAGE);
const events = () => countsBy(tally.client(keys.query), "browser", Dimension.EVENT_NAME, Metric.EVENTS);

/** A site of its own for one test, with readers of its report. */
async function testSite(siteId: string, settings: { allowedOrigins?: string[] } = {}) {
  const { ingest, query } = await tally.site(siteId, settings);
  return {
    /** Serves app pages under /<prefix>/ with this site's tracker and `data` attributes. */
    serve: (prefix: string, data: Record<string, string> = {}) =>
      tags.set(prefix, trackerTag({ site: siteId, key: ingest, ...data })),
    pages: () => countsBy(tally.client(query), siteId, Dimension.PAGE),
    events: () => countsBy(tally.client(query), siteId, Dimension.EVENT_NAME, Metric.EVENTS),
    /** Custom events by name and `url` property ("name url"): their counts. */
    links: async () => {
      const report = await tally.client(query).query.runReport({
        siteId,
        metrics: [Metric.EVENTS],
        dimensions: [{ kind: { case: "standard", value: Dimension.EVENT_NAME } }, { kind: { case: "property", value: "url" } }],
        dateRanges: [{ startDate: "today", endDate: "today" }],
      });
      const rows = report.rows.filter((row) => row.dimensionValues[0] != "pageview");
      const count = (row: (typeof rows)[number]) => Number(row.metricValues[0]?.value.value);
      return Object.fromEntries(rows.map((row) => [row.dimensionValues.join(" "), count(row)]));
    },
  };
}

/**
 * A browser profile whose clock is paused, so the tracker's timers (the batch
 * delay, retry backoff) fire only when a test runs the clock: what is sent
 * then comes from what the test did. Every page records the Track requests it
 * makes in localStorage (see {@link sent}).
 */
async function pausedContext(from = browser): Promise<BrowserContext> {
  const context = await from.newContext();
  await context.addInitScript(recordTrackCalls);
  await context.clock.install();
  await context.clock.pauseAt(Date.now() + 1000);
  return context;
}

/**
 * Init script: wraps fetch to note each Track request (body, keepalive) and,
 * once it is answered, its grpc-status header and body, in localStorage
 * "test_calls", which outlives the page (nothing, when the test filled the
 * storage). (Page functions are sent as source text: helpers are methods,
 * which tsx leaves without name wrappers.)
 */
function recordTrackCalls(): void {
  const original = window.fetch;
  const calls = {
    base64(bytes: Uint8Array) {
      return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    },
    update(change: (list: Record<string, unknown>[]) => void) {
      const list = JSON.parse(localStorage.getItem("test_calls") || "[]");
      change(list);
      try {
        localStorage.setItem("test_calls", JSON.stringify(list));
      } catch {
        // the storage is full
      }
    },
  };
  window.fetch = (input, init) => {
    if (!String(input).endsWith("/tally.v1.IngestService/Track")) return original(input, init);
    let index = 0;
    calls.update((list) => (index = list.push({ keepalive: !!init?.keepalive, body: calls.base64(init!.body as Uint8Array) }) - 1));
    const response = original(input, init);
    response.then(
      async (res) => {
        const status = res.headers.get("grpc-status");
        const body = calls.base64(new Uint8Array(await res.clone().arrayBuffer()));
        calls.update((list) => Object.assign(list[index], { http: res.status, status, response: body }));
      },
      () => {}, // unanswered: the server is down or the page is gone
    );
    return response;
  };
}

/** A Track request a page made, decoded. */
interface Call {
  keepalive: boolean;
  events: Event[];
  /** The HTTP status; undefined while unanswered. */
  http?: number;
  /** grpc-status from the headers (trailers-only answers); undefined while unanswered. */
  status?: number | null;
  /** Verdicts of an answered request, in request order. */
  verdicts?: Verdict[];
}

/** The Track requests the pages of `page`'s origin made, read from a page of that origin. */
async function sent(page: Page): Promise<Call[]> {
  const raw: { keepalive: boolean; body: string; http?: number; status?: string | null; response?: string }[] = JSON.parse(
    (await page.evaluate(() => localStorage.getItem("test_calls"))) ?? "[]",
  );
  return raw.map((call) => {
    const request = fromBinary(TrackRequestSchema, Buffer.from(call.body, "base64").subarray(5));
    const decoded: Call = { keepalive: call.keepalive, events: request.events };
    if (call.response != null) {
      decoded.http = call.http;
      decoded.status = call.status == null ? null : Number(call.status);
      const body = Buffer.from(call.response, "base64");
      // The first grpc-web frame, when it is a message (flag 0) and not the trailer.
      if (body.length >= 5 && body[0] == 0) {
        const message = body.subarray(5, 5 + body.readUInt32BE(1));
        decoded.verdicts = fromBinary(TrackResponseSchema, message).results.map((r) => r.verdict);
      }
    }
    return decoded;
  });
}

/** What the tracker has queued in localStorage. */
async function queued(page: Page): Promise<WireEvent[]> {
  return JSON.parse((await page.evaluate((key) => localStorage.getItem(key), QUEUE)) ?? "[]");
}

/** The distinct events of all `calls` (a batch sent again is the same events), in order. */
function distinct(calls: Call[]): Event[] {
  const seen = new Set<string>();
  return calls.flatMap((call) => call.events).filter((e) => !seen.has(e.eventId) && !!seen.add(e.eventId));
}

/** An event as "name" (custom) or "pageview /path". */
function label(e: Event): string {
  return e.type == EventType.PAGEVIEW ? `pageview ${new URL(e.url).pathname}` : e.name;
}

test("page views, SPA navigations and custom events reach RunReport", async () => {
  const page = await open("/home");
  await page.evaluate(() => {
    history.pushState({}, "", "/spa/one");
    history.pushState({}, "", "/spa/two");
    history.replaceState({}, "", "/spa/two"); // the same URL: not a new page view
    window.tally!.track("signup", { plan: "pro", seats: 3 }, [9.5, "EUR"]);
    return window.tally!.flush();
  });
  await eventually(pages, { "/home": 1, "/spa/one": 1, "/spa/two": 1 });
  await eventually(async () => (await events()).signup, 1);
  await page.evaluate(() => history.back());
  await eventually(async () => (await pages())["/spa/one"], 2);
  await page.context().close();
});

test("a batch queued while the server is down is delivered after it comes back", async () => {
  const page = await open("/offline");
  await eventually(async () => (await pages())["/offline"], 1);
  await tally.stop();
  await page.evaluate(() => window.tally!.track("while-down"));
  // The first attempt fails and the batch waits in localStorage for the next one.
  await page.waitForFunction(() => localStorage.getItem("tally_queue")?.includes("while-down"));
  await new Promise((r) => setTimeout(r, 1500));
  await tally.resume();
  await eventually(async () => (await events())["while-down"], 1);
  await page.waitForFunction(() => localStorage.getItem("tally_queue") == "[]");
  await page.context().close();
});

test("two tabs queueing while the server is down lose nothing of each other's", async () => {
  const context = await browser.newContext();
  const tabs = [await context.newPage(), await context.newPage()];
  for (const [i, tab] of tabs.entries()) {
    await tab.goto(`${origin}/tab-${i}`);
    await tab.waitForFunction(() => window.tally);
  }
  await eventually(async () => [(await pages())["/tab-0"], (await pages())["/tab-1"]], [1, 1]);
  await tally.stop();
  // Both tabs save the one shared queue, in turns.
  for (let round = 0; round < 3; round++) {
    for (const [i, tab] of tabs.entries()) {
      await tab.evaluate((name) => window.tally!.track(name), `tab-${i}-${round}`);
    }
  }
  await tabs[0].waitForFunction(() => ["tab-0-2", "tab-1-2"].every((n) => localStorage.getItem("tally_queue")?.includes(n)));
  await new Promise((r) => setTimeout(r, 1500));
  await tally.resume();
  const want: Record<string, number> = {};
  for (let round = 0; round < 3; round++) for (const i of [0, 1]) want[`tab-${i}-${round}`] = 1;
  await eventually(async () => {
    const counts = await events();
    return Object.fromEntries(Object.keys(want).map((name) => [name, counts[name]]));
  }, want);
  await context.close();
});

test("a realtime stream updates in the page", async () => {
  const context = await browser.newContext();
  const watcher = await context.newPage();
  await watcher.goto(`${origin}/realtime.html?api=${encodeURIComponent(tally.url)}&key=${keys.query}&site=browser`);
  await watcher.waitForFunction(() => document.getElementById("pages")?.dataset.snapshots);
  const visitor = await open("/live");
  await watcher.waitForFunction(() => document.getElementById("pages")!.textContent!.includes("/live=1"), null, { timeout: 10_000 });
  assert.equal(await watcher.evaluate(() => document.getElementById("pages")!.dataset.error), undefined);
  await visitor.context().close();
  await context.close();
});

test("with the opt-out flag set nothing is sent; once it is cleared, events arrive", async () => {
  const optout = await testSite("optout");
  optout.serve("optout");
  const context = await pausedContext();
  const page = await context.newPage();
  await page.goto(`${origin}/plain`);
  await page.evaluate((flag) => localStorage.setItem(flag, "1"), OPT_OUT);
  await page.goto(`${origin}/optout/while-out`);
  await page.waitForFunction(() => window.tally);
  await page.evaluate(() => {
    window.tally!.track("while-out");
    history.pushState({}, "", "/optout/while-out-too");
    return window.tally!.flush();
  });
  assert.deepEqual(await queued(page), []);
  assert.deepEqual(await sent(page), []);

  await page.evaluate((flag) => {
    localStorage.removeItem(flag);
    history.pushState({}, "", "/optout/back");
    window.tally!.track("back");
    return window.tally!.flush();
  }, OPT_OUT);
  const delivered = distinct(await sent(page)).map(label);
  assert.deepEqual(delivered, ["pageview /optout/back", "back"]);
  // Only what was tracked after the flag was cleared is stored.
  await eventually(optout.pages, { "/optout/back": 1 });
  assert.deepEqual(await optout.events(), { pageview: 1, back: 1 });
  await context.close();
});

test("opting out drops the events already queued", async () => {
  const dropped = await testSite("optout-queued");
  dropped.serve("optout-queued");
  // Both ways a page opts out: the tracker's call, or setting the documented
  // flag itself (a consent banner, another tab).
  const ways: Record<string, (flag: string) => void> = {
    api: () => window.tally!.optOut(true),
    flag: (flag) => localStorage.setItem(flag, "1"),
  };
  const back: Record<string, number> = {};
  for (const [way, optOut] of Object.entries(ways)) {
    const context = await pausedContext();
    const page = await open(`/optout-queued/${way}`, context);
    await page.evaluate((name) => window.tally!.track(name), `queued-${way}`);
    assert.equal((await queued(page)).length, 2, "the page view and the event wait for the batch delay");
    await page.evaluate(optOut, OPT_OUT);
    await page.evaluate(() => window.tally!.flush());
    await context.clock.runFor(60_000); // the batch delay and more
    assert.deepEqual(await queued(page), []);
    assert.deepEqual(await sent(page), []);
    // Back in: new events are sent, the dropped ones are not.
    await page.evaluate((name) => {
      window.tally!.optOut(false);
      window.tally!.track(name);
      return window.tally!.flush();
    }, `back-${way}`);
    back[`back-${way}`] = 1;
    await context.close();
  }
  await eventually(dropped.events, back);
});

test("with the Do-Not-Track option a browser asking not to be tracked sends nothing; without it, it sends", async () => {
  const dnt = await testSite("dnt");
  const cases = [
    { name: "dnt-donottrack", option: true, doNotTrack: "1", gpc: false, sent: false },
    { name: "dnt-gpc", option: true, doNotTrack: null, gpc: true, sent: false },
    { name: "dnt-no-signal", option: true, doNotTrack: "0", gpc: false, sent: true },
    { name: "dnt-option-off", option: false, doNotTrack: "1", gpc: true, sent: true },
  ];
  const pagesWanted: Record<string, number> = {};
  const eventsWanted: Record<string, number> = {};
  for (const c of cases) {
    dnt.serve(c.name, c.option ? { dnt: "" } : {});
    const context = await pausedContext();
    await context.addInitScript(
      ({ doNotTrack, gpc }) => {
        Object.defineProperty(Navigator.prototype, "doNotTrack", { configurable: true, get() { return doNotTrack; } });
        Object.defineProperty(Navigator.prototype, "globalPrivacyControl", { configurable: true, get() { return gpc; } });
      },
      { doNotTrack: c.doNotTrack, gpc: c.gpc },
    );
    const page = await open(`/${c.name}/page`, context);
    const signals = await page.evaluate(() => [
      navigator.doNotTrack,
      (navigator as { globalPrivacyControl?: boolean }).globalPrivacyControl,
    ]);
    assert.deepEqual(signals, [c.doNotTrack, c.gpc]);
    await page.evaluate((name) => {
      window.tally!.track(name);
      return window.tally!.flush();
    }, c.name);
    const delivered = distinct(await sent(page)).map(label);
    assert.deepEqual(delivered, c.sent ? [`pageview /${c.name}/page`, c.name] : [], c.name);
    if (c.sent) {
      pagesWanted[`/${c.name}/page`] = 1;
      eventsWanted[c.name] = 1;
      eventsWanted.pageview = (eventsWanted.pageview ?? 0) + 1;
    }
    await context.close();
  }
  await eventually(dnt.pages, pagesWanted);
  assert.deepEqual(await dnt.events(), eventsWanted);
});

test("outbound and download clicks are custom events with the link as url, only when enabled", async () => {
  const links = await testSite("links");
  const out = elsewhere();
  const file = `${origin}/files/report.pdf`;
  const cases: { prefix: string; data: Record<string, string>; want: string[] }[] = [
    { prefix: "links-on", data: { outbound: "", downloads: "" }, want: [`download ${file}`, `outbound ${out}`] },
    { prefix: "links-outbound", data: { outbound: "" }, want: [`outbound ${out}`] },
    { prefix: "links-downloads", data: { downloads: "" }, want: [`download ${file}`] },
    { prefix: "links-off", data: {}, want: [] },
  ];
  const pagesWanted: Record<string, number> = {};
  const clicksWanted: Record<string, number> = {};
  for (const c of cases) {
    links.serve(c.prefix, c.data);
    const context = await pausedContext();
    const page = await open(`/${c.prefix}/start`, context);
    // A file download (the page stays), a link within the app, then a link away.
    await Promise.all([page.waitForEvent("download"), page.click("#file")]);
    await page.click("#next");
    await page.waitForURL(`${origin}/${c.prefix}/next`);
    await page.waitForFunction(() => window.tally);
    await page.click("#out");
    await page.waitForURL(out);
    await page.goto(`${origin}/plain`);
    const calls = await sent(page);
    const clicks = distinct(calls)
      .filter((e) => e.type == EventType.CUSTOM)
      .map((e) => `${e.name} ${e.properties.url?.value.value}`);
    assert.deepEqual(clicks, c.want, c.prefix);
    // Whatever was queued when the page left went out with keepalive.
    assert.ok(calls.length > 0 && calls.at(-1)!.keepalive, c.prefix);
    pagesWanted[`/${c.prefix}/start`] = 1;
    pagesWanted[`/${c.prefix}/next`] = 1;
    for (const click of c.want) clicksWanted[click] = (clicksWanted[click] ?? 0) + 1;
    // Closing the context cancels a keepalive request still in flight: first
    // wait until the server has what this case sent.
    await eventually(async () => {
      const [stored, clicked] = [await links.pages(), await links.links()];
      return [stored[`/${c.prefix}/start`], stored[`/${c.prefix}/next`], ...c.want.map((click) => clicked[click])];
    }, [1, 1, ...c.want.map((click) => clicksWanted[click])]);
    await context.close();
  }
  await eventually(links.pages, pagesWanted);
  assert.deepEqual(await links.links(), clicksWanted);
});

test("events queued when the page goes away are sent with keepalive and arrive", async () => {
  const leave = await testSite("leave");
  leave.serve("leave");
  // The batch delay never runs out (the clock is paused): only the page going away sends.
  // Navigating and closing fire both pagehide and visibilitychange; the page
  // stays for the last two, which fire one of them each, as browsers may (a tab
  // switch hides the page without pagehide; headless Chromium cannot hide a page).
  const ways: Record<string, (page: Page) => Promise<unknown>> = {
    navigate: (page) => page.goto(`${origin}/plain`),
    close: (page) => page.close(),
    pagehide: (page) => page.evaluate(() => dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }))),
    hidden: (page) =>
      page.evaluate(() => {
        Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
        document.dispatchEvent(new Event("visibilitychange"));
      }),
  };
  const pagesWanted: Record<string, number> = {};
  const eventsWanted: Record<string, number> = { pageview: 0 };
  for (const [way, goAway] of Object.entries(ways)) {
    const context = await pausedContext();
    let page = await open(`/leave/${way}`, context);
    await page.evaluate((name) => window.tally!.track(name, { way: name }), `left-${way}`);
    assert.equal((await queued(page)).length, 2);
    assert.deepEqual(await sent(page), []);
    await goAway(page);
    if (page.isClosed()) {
      page = await context.newPage();
      await page.goto(`${origin}/plain`);
    }
    const calls = await sent(page);
    // One request, though both pagehide and visibilitychange fire on the way out.
    assert.deepEqual(
      calls.map((call) => [call.keepalive, call.events.map(label)]),
      [[true, [`pageview /leave/${way}`, `left-${way}`]]],
      way,
    );
    // The tracker sends no visitor or session id: the server derives visitors.
    for (const e of calls[0].events) assert.deepEqual([e.anonymousId, e.userId, e.session], ["", "", undefined]);
    pagesWanted[`/leave/${way}`] = 1;
    eventsWanted[`left-${way}`] = 1;
    eventsWanted.pageview++;
    // Closing the context cancels a keepalive request still in flight.
    await eventually(async () => (await leave.events())[`left-${way}`], 1);
    await context.close();
  }
  await eventually(leave.pages, pagesWanted);
  assert.deepEqual(await leave.events(), eventsWanted);
});

test("a batch refused for good is dropped from the queue and not retried", async () => {
  const refused = await testSite("refused", { allowedOrigins: ["https://shop.example"] });
  const cases: { prefix: string; data: Record<string, string>; status: Code }[] = [
    { prefix: "refused-key", data: { key: "tly_ing_0000000000000000000000000000" }, status: Code.Unauthenticated },
    // The key is good, but the site takes events only from https://shop.example.
    { prefix: "refused-origin", data: {}, status: Code.PermissionDenied },
  ];
  for (const c of cases) {
    refused.serve(c.prefix, c.data);
    const context = await pausedContext();
    const page = await open(`/${c.prefix}/page`, context);
    await page.evaluate(() => {
      window.tally!.track("refused");
      return window.tally!.flush();
    });
    // The page notes the answer once it has read the body, maybe after the tracker.
    await eventually(async () => (await sent(page)).map((call) => [call.status, call.events.length]), [[c.status, 2]]);
    assert.deepEqual(await queued(page), [], c.prefix);
    // A retry would come after a backoff of at most 30 s; nor does a flush find anything to send.
    await context.clock.runFor(60_000);
    await page.evaluate(() => window.tally!.flush());
    assert.equal((await sent(page)).length, 1, c.prefix);
    await context.close();
  }
  assert.deepEqual(await refused.events(), {});
});

test("an event the server rejects is dropped with its batch; the batch's good events are stored", async () => {
  const rejected = await testSite("rejected");
  rejected.serve("rejected");
  const context = await pausedContext();
  const page = await open("/rejected/page", context);
  const tooLong = "n".repeat(201); // names are at most 200 bytes
  await page.evaluate((name) => {
    window.tally!.track("kept");
    window.tally!.track(name);
    return window.tally!.flush();
  }, tooLong);
  const calls = await sent(page);
  assert.equal(calls.length, 1);
  const want = calls[0].events.map((e) => (e.name == tooLong ? Verdict.REJECTED : Verdict.ACCEPTED));
  assert.deepEqual(calls[0].verdicts, want);
  assert.ok(want.includes(Verdict.REJECTED) && want.includes(Verdict.ACCEPTED));
  assert.deepEqual(await queued(page), []);
  await context.clock.runFor(60_000);
  await page.evaluate(() => window.tally!.flush());
  assert.equal((await sent(page)).length, 1);
  const valid = calls[0].events.filter((e) => e.name != tooLong);
  await eventually(rejected.events, Object.fromEntries(valid.map((e) => [e.type == EventType.PAGEVIEW ? "pageview" : e.name, 1])));
  await context.close();
});

test("the queue keeps the newest 1,000 events: when it is full, the oldest are dropped", async () => {
  const bounded = await testSite("bounded");
  bounded.serve("bounded");
  const context = await pausedContext();
  const page = await open("/bounded/page", context);
  // The clock is paused: nothing goes out while the page tracks more than the queue holds.
  const tracked = MAX_QUEUE + 10;
  await page.evaluate((n) => {
    for (let i = 0; i < n; i++) window.tally!.track("bulk", { n: i });
  }, tracked);
  assert.deepEqual(await sent(page), []);
  // The page view and the first ten events gave way to the last thousand.
  const newest = Array.from({ length: MAX_QUEUE }, (_, i) => tracked - MAX_QUEUE + i);
  assert.deepEqual((await queued(page)).map((e) => e.props?.n), newest);
  await context.clock.resume();
  await eventually(bounded.events, { bulk: MAX_QUEUE });
  await page.waitForFunction((key) => localStorage.getItem(key) == "[]", QUEUE);
  const delivered = distinct(await sent(page)).map((e) => e.properties.n?.value.value);
  assert.deepEqual(delivered, newest);
  await context.close();
});

test("with the storage full, tracking throws nothing into the page and events wait in memory", async () => {
  const full = await testSite("full");
  full.serve("full");
  const context = await pausedContext();
  const page = await open("/full/page", context);
  assert.deepEqual((await queued(page)).map((e) => e.type), [EventType.PAGEVIEW]);
  // Fill the origin's storage to its last few characters.
  const room = await page.evaluate(() => {
    let filler = "";
    for (let size = 1 << 24; size >= 16; size >>= 1) {
      try {
        localStorage.setItem("filler", filler + "x".repeat(size));
        filler += "x".repeat(size);
      } catch {
        // too much: try half
      }
    }
    try {
      localStorage.setItem("room", "y".repeat(32));
      return true;
    } catch {
      return false;
    }
  });
  assert.equal(room, false, "the storage is full");
  const names = ["full-1", "full-2", "full-3"];
  const errors = await page.evaluate((names) => {
    const caught: string[] = [];
    for (const name of names) {
      try {
        window.tally!.track(name);
      } catch (error) {
        caught.push(String(error));
      }
    }
    return caught;
  }, names);
  assert.deepEqual(errors, []);
  // The stored queue could not take them; the tracker holds them in memory and sends them.
  assert.deepEqual((await queued(page)).map((e) => e.type), [EventType.PAGEVIEW]);
  await page.evaluate(() => window.tally!.flush());
  await eventually(full.events, Object.fromEntries([["pageview", 1], ...names.map((name) => [name, 1])]));
  await context.close();
});

test("a page restored from the back/forward cache counts a page view again", async () => {
  const restored = await testSite("bfcache");
  restored.serve("bfcache");
  // Playwright turns the cache off unless told not to.
  const cached = await launch({ ignoreDefaultArgs: ["--disable-back-forward-cache"] });
  try {
    const context = await pausedContext(cached);
    await context.addInitScript(() => addEventListener("pageshow", (ev) => (window.shows = [...(window.shows ?? []), ev.persisted])));
    const page = await open("/bfcache/page", context);
    await page.goto(`${origin}/plain`);
    await page.goBack({ waitUntil: "commit" });
    await page.waitForFunction(() => window.shows?.length == 2);
    // The same document, shown again from the cache: its script did not run again.
    assert.deepEqual(await page.evaluate(() => window.shows), [false, true]);
    // The keepalive request may still be in flight (it went on while the page
    // was frozen), and the new view waits for it: let time run.
    await context.clock.resume();
    await eventually(async () => (await sent(page)).length, 2);
    const calls = await sent(page);
    // The first view went out with keepalive as the page was left; the second after it was restored.
    assert.deepEqual(
      calls.map((call) => [call.keepalive, call.events.map(label)]),
      [
        [true, ["pageview /bfcache/page"]],
        [false, ["pageview /bfcache/page"]],
      ],
    );
    assert.equal(distinct(calls).length, 2);
    await eventually(restored.pages, { "/bfcache/page": 2 });
    await context.close();
  } finally {
    await cached.close();
  }
});

test("a middle click opening a link in a new tab counts once as an outbound or download click", async () => {
  const middle = await testSite("middle");
  middle.serve("middle", { outbound: "", downloads: "" });
  const out = elsewhere();
  const file = `${origin}/files/report.pdf`;
  const context = await pausedContext();
  const page = await open("/middle/page", context);
  const [tab] = await Promise.all([context.waitForEvent("page"), page.click("#out", { button: "middle" })]);
  await tab.waitForURL(out);
  await page.click("#file", { button: "middle" });
  await page.click("#out", { button: "right" }); // a context menu, not a click on the link
  assert.equal(page.url(), `${origin}/middle/page`, "the links opened elsewhere");
  await context.clock.resume();
  await page.waitForFunction((key) => localStorage.getItem(key) == "[]", QUEUE);
  const clicks = distinct(await sent(page))
    .filter((e) => e.type == EventType.CUSTOM)
    .map((e) => `${e.name} ${e.properties.url?.value.value}`);
  assert.deepEqual(clicks, [`outbound ${out}`, `download ${file}`]);
  await eventually(middle.links, { [`outbound ${out}`]: 1, [`download ${file}`]: 1 });
  await context.close();
});

test("a batch answered with an HTTP 4xx (a wrong data-api, a body too large) is dropped, not retried", async () => {
  const refused = await testSite("http-refused");
  for (const code of [400, 404, 413]) {
    const name = `http-${code}`;
    failing.set(name, code);
    refused.serve(name, { api: `${origin}/api/${name}` });
    const context = await pausedContext();
    const page = await open(`/${name}/page`, context);
    await page.evaluate((name) => {
      window.tally!.track(name);
      return window.tally!.flush();
    }, name);
    // The page notes the answer once it has read its body (the tracker does not read it).
    await eventually(async () => (await sent(page)).map((call) => [call.http, call.events.length]), [[code, 2]]);
    assert.deepEqual(await queued(page), [], name);
    // A retry would come after a backoff of at most 30 s; nor does a flush find anything to send.
    await context.clock.runFor(60_000);
    await page.evaluate(() => window.tally!.flush());
    assert.equal((await sent(page)).length, 1, name);
    await context.close();
  }
  assert.deepEqual(await refused.events(), {});
});

test("a batch answered with HTTP 408, 429 or 5xx is retried with backoff until the server answers", async () => {
  const retried = await testSite("http-retried");
  const codes = [408, 429, 502, 503];
  for (const code of codes) {
    const name = `http-${code}`;
    failing.set(name, code);
    retried.serve(name, { api: `${origin}/api/${name}` });
    const context = await pausedContext();
    const page = await open(`/${name}/page`, context);
    await page.evaluate((name) => {
      window.tally!.track(name);
      return window.tally!.flush();
    }, name);
    // Each retry waits twice as long as the one before, from a second.
    for (const backoff of [1000, 2000, 4000]) {
      const before = (await sent(page)).length;
      await context.clock.runFor(backoff - 1);
      assert.equal((await sent(page)).length, before, `${name}: no retry before ${backoff} ms`);
      await context.clock.runFor(1);
      await eventually(async () => (await sent(page)).map((call) => call.http), Array(before + 1).fill(code));
    }
    // The proxy forwards again: the next retry is delivered.
    failing.delete(name);
    await context.clock.runFor(8000);
    await page.waitForFunction((key) => localStorage.getItem(key) == "[]", QUEUE);
    const calls = await sent(page);
    assert.deepEqual(calls.map((call) => call.http), [code, code, code, code, 200], name);
    // Every attempt carried the same batch.
    const ids = calls.map((call) => call.events.map((e) => e.eventId));
    for (const batch of ids) assert.deepEqual(batch, ids[0], name);
    assert.deepEqual(calls[0].events.map(label), [`pageview /${name}/page`, name]);
    await context.close();
  }
  await eventually(retried.events, Object.fromEntries([["pageview", codes.length], ...codes.map((code) => [`http-${code}`, 1])]));
});

test("a batch that finishes while a keepalive request is in flight does not send the keepalive's events again", async () => {
  const overlap = await testSite("overlap");
  overlap.serve("overlap");
  const context = await pausedContext();
  // The tracker sees the answers to its Track requests only when the test releases them.
  await context.addInitScript(() => {
    const original = window.fetch;
    const held: (() => void)[] = [];
    window.release = (index) => held[index]();
    window.fetch = (input, init) => {
      const response = original(input, init);
      if (!String(input).endsWith("/tally.v1.IngestService/Track")) return response;
      return new Promise((resolve) => held.push(() => resolve(response)));
    };
  });
  const page = await open("/overlap/page", context);
  await page.evaluate(() => {
    window.tally!.track("first");
    void window.tally!.flush();
    window.tally!.track("second");
    // The page is leaving while the first batch is in flight: a keepalive request takes everything.
    dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true }));
  });
  const requests = [
    [false, ["pageview /overlap/page", "first"]],
    [true, ["pageview /overlap/page", "first", "second"]],
  ];
  assert.deepEqual((await sent(page)).map((call) => [call.keepalive, call.events.map(label)]), requests);
  // The first batch is answered: its events leave the queue, "second" stays until the keepalive request is answered.
  await page.evaluate(() => window.release!(0));
  await page.waitForFunction(() => JSON.parse(localStorage.getItem("tally_queue")!).length == 1);
  await context.clock.runFor(60_000);
  assert.deepEqual((await sent(page)).map((call) => [call.keepalive, call.events.map(label)]), requests);
  await page.evaluate(() => window.release!(1));
  await page.waitForFunction(() => localStorage.getItem("tally_queue") == "[]");
  await context.clock.runFor(60_000);
  assert.equal((await sent(page)).length, requests.length);
  await eventually(overlap.events, { pageview: 1, first: 1, second: 1 });
  await context.close();
});
