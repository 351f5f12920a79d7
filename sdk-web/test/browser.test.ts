// The tracker and the client in Debian's headless Chromium: pages served from
// one loopback origin load the tracker from the real server on another, so
// every request crosses origins (CORS).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { build } from "esbuild";
import { chromium, type Browser, type Page } from "playwright-core";
import { Dimension, Metric } from "../src/index.js";
import type { Tracker } from "../src/tracker.js";
import { countsBy, TallyServer } from "./server.js";

declare global {
  interface Window {
    tally?: Tracker;
  }
}

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
// A desktop browser's user agent: HeadlessChrome would be flagged as a bot and left out of reports.
const USER_AGENT =
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

let tally: TallyServer;
let site: Server;
let origin: string;
let browser: Browser;
let keys: { ingest: string; query: string };

before(async () => {
  tally = await TallyServer.start();
  keys = await tally.site("browser");
  const realtime = await build({ entryPoints: ["test/pages/realtime.ts"], bundle: true, write: false, format: "esm" });
  const tag = `<script defer data-site="browser" data-key="${keys.ingest}" src="${tally.url}/tally.js"></script>`;
  const pages: Record<string, [string, string]> = {
    "/realtime.js": ["text/javascript", realtime.outputFiles[0].text],
    "/realtime.html": ["text/html", `<ul id="pages"></ul><script type="module" src="/realtime.js"></script>`],
  };
  site = createServer((req, res) => {
    const path = new URL(req.url!, "http://x").pathname;
    // Any other path is an app page with the tracker (SPA routes are served the same page).
    const [type, body] = pages[path] ?? ["text/html", `<!doctype html><title>app</title><a id="out" href="https://elsewhere.example/">x</a>${tag}`];
    res.writeHead(200, { "content-type": type }).end(body);
  });
  await new Promise<void>((done) => site.listen(0, "127.0.0.1", done));
  origin = `http://127.0.0.1:${(site.address() as { port: number }).port}`;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_FLAGS });
});

after(async () => {
  await browser?.close();
  site?.close();
  await tally?.close();
});

async function open(path: string): Promise<Page> {
  const page = await (await browser.newContext({ userAgent: USER_AGENT })).newPage();
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
  const context = await browser.newContext({ userAgent: USER_AGENT });
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
  const context = await browser.newContext({ userAgent: USER_AGENT });
  const watcher = await context.newPage();
  await watcher.goto(`${origin}/realtime.html?api=${encodeURIComponent(tally.url)}&key=${keys.query}&site=browser`);
  await watcher.waitForFunction(() => document.getElementById("pages")?.dataset.snapshots);
  const visitor = await open("/live");
  await watcher.waitForFunction(() => document.getElementById("pages")!.textContent!.includes("/live=1"), null, { timeout: 10_000 });
  assert.equal(await watcher.evaluate(() => document.getElementById("pages")!.dataset.error), undefined);
  await visitor.context().close();
  await context.close();
});
