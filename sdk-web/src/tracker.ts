// The browser tracker: automatic page views (SPA navigations included), custom
// events, outbound links and downloads, batched and sent as unary grpc-web to
// IngestService/Track, with a localStorage queue so failed batches are retried.
import { encodeTrack, frame, grpcStatus, uuidv7, type Property, type WireContext, type WireEvent } from "./wire.js";

/** Options of {@link init}. */
export interface TrackerOptions {
  /** Base URL of the Tally server, e.g. "https://tally.example.com". */
  endpoint: string;
  /** The site's ingest key (public). */
  key: string;
  /** Site id; may stay empty, the key names its site. */
  site?: string;
  /** Track page views on load and on history navigations (default true). */
  pageviews?: boolean;
  /** Also count hash changes as navigations (hash routing). */
  hash?: boolean;
  /** Send nothing when the browser asks not to be tracked (Do-Not-Track or Global Privacy Control). */
  respectDnt?: boolean;
  /** Track clicks on links to other hosts as "outbound" events. */
  outbound?: boolean;
  /** Track clicks on file links as "download" events. */
  downloads?: boolean;
  /** Milliseconds events wait to be batched (default 1000). */
  delay?: number;
  /** Most events per request (default 50). */
  batch?: number;
}

/** What a page can do with a running tracker. */
export interface Tracker {
  /** Records a custom event with optional properties and revenue ([amount, currency]). */
  track(name: string, props?: Record<string, Property>, revenue?: [number, string]): void;
  /** Records a page view of the current location (or `url`). */
  pageview(url?: string): void;
  /** Sends what is queued now. */
  flush(): Promise<void>;
  /** Opts this browser out (true) or back in (false); remembered in localStorage. */
  optOut(out: boolean): void;
}

/** localStorage key that opts a browser out when set to "1". */
export const OPT_OUT = "tally_ignore";
const QUEUE = "tally_queue";
/** Most events the queue holds; when it is full, the oldest are dropped. */
export const MAX_QUEUE = 1000;
const FILES = /\.(pdf|zip|gz|dmg|exe|msi|docx?|xlsx?|pptx?|csv|mp3|mp4|apk)$/i;
// Codes worth retrying: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE.
const RETRY = [2, 4, 8, 10, 13, 14];

/** Starts tracking with `o`; returns the tracker. */
export function init(o: TrackerOptions): Tracker {
  // Storage may be blocked or full (quota): its errors never reach the page,
  // and a queue it cannot hold stays in memory.
  const quiet = <T>(f: () => T): T | undefined => {
    try {
      return f();
    } catch {}
  };
  const store = quiet(() => localStorage);
  const off = () =>
    quiet(() => store?.getItem(OPT_OUT)) == "1" ||
    (o.respectDnt && (navigator.doNotTrack == "1" || (navigator as { globalPrivacyControl?: boolean }).globalPrivacyControl));
  const stored = (): WireEvent[] => quiet(() => JSON.parse(store?.getItem(QUEUE) || "[]")) || [];
  let queue = stored();
  let timer: ReturnType<typeof setTimeout> | undefined;
  // Requests in flight, and whether one of them is a keepalive request.
  let flying = 0;
  let leaving = false;
  let backoff = 0;
  let last = "";
  // Tabs share the stored queue: keep what other tabs queued (sending it too is
  // harmless, the server drops repeated event ids) and drop only what this tab
  // delivered, so no tab's save loses another tab's events.
  const save = (delivered?: Set<string>) => {
    const mine = new Set(queue.map((e) => e.id));
    queue = queue.concat(stored().filter((e) => !mine.has(e.id) && !delivered?.has(e.id)));
    // After a long outage new events push out the oldest.
    if (queue.length > MAX_QUEUE) queue = queue.sort((a, b) => a.ts - b.ts).slice(-MAX_QUEUE);
    quiet(() => store?.setItem(QUEUE, JSON.stringify(queue)));
  };
  const context = (): WireContext => ({
    locale: navigator.language,
    timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone,
    width: screen.width,
    height: screen.height,
    density: devicePixelRatio,
  });
  const schedule = (ms: number) => {
    clearTimeout(timer);
    timer = setTimeout(() => flush(), ms);
  };

  const drop = () => {
    queue = [];
    quiet(() => store?.removeItem(QUEUE));
  };

  async function flush(keepalive?: boolean): Promise<void> {
    // Opted out since these events were queued (in another tab, or by the page
    // setting the flag itself): they are dropped, not sent.
    if (off()) return drop();
    // The page is leaving: send with keepalive even while a batch is in flight
    // (it may die with the page), but once: pagehide and visibilitychange both fire.
    if (!queue.length || (keepalive ? leaving : flying)) return;
    flying++;
    if (keepalive) leaving = true;
    const batch = queue.slice(0, o.batch || 50);
    let retry = true;
    try {
      const res = await fetch(`${o.endpoint.replace(/\/$/, "")}/tally.v1.IngestService/Track`, {
        method: "POST",
        keepalive,
        headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${o.key}` },
        body: frame(encodeTrack(o.site || "", batch, context())),
      });
      // An HTTP error comes from a proxy or a wrong `endpoint`, not from Tally:
      // a timeout, throttling or a server error may pass; any other 4xx (404,
      // 413...) will not, and the batch is dropped as a refusal.
      const http = res.status;
      retry = res.ok
        ? RETRY.includes(grpcStatus(res.headers, new Uint8Array(await res.arrayBuffer())))
        : http > 499 || http == 408 || http == 429;
    } catch {
      // network error or server down: keep the batch
    }
    flying--;
    if (keepalive) leaving = false;
    if (retry) backoff = Math.min(backoff * 2 || 1000, 30000);
    else {
      // Delivered, or refused for good (bad key, bad request): either way not resent.
      backoff = 0;
      const sent = new Set(batch.map((e) => e.id));
      queue = queue.filter((e) => !sent.has(e.id));
      save(sent);
    }
    // While the other request is in flight, it carries what is left (the
    // keepalive one took the head of the queue too): sending that now would
    // send it twice. The last request to finish sends what follows.
    if (!flying && queue.length) schedule(backoff);
  }

  function add(e: Omit<WireEvent, "id" | "ts">): void {
    if (off()) return;
    queue.push({ id: uuidv7(), ts: Date.now(), ...e });
    save();
    if (!backoff) schedule(queue.length >= (o.batch || 50) ? 0 : (o.delay ?? 1000));
  }

  function pageview(url = location.href): void {
    if (url == last) return; // replaceState or a repeated push of the same URL
    last = url;
    add({ type: 1, url, referrer: document.referrer || undefined });
  }

  const tracker: Tracker = {
    track: (name, props, revenue) => add({ type: 2, name, url: location.href, props, revenue }),
    pageview,
    flush: () => flush(),
    optOut(out) {
      if (out) drop();
      quiet(() => (out ? store?.setItem(OPT_OUT, "1") : store?.removeItem(OPT_OUT)));
    },
  };

  if (o.pageviews !== false) {
    const navigated = () => pageview();
    for (const m of ["pushState", "replaceState"] as const) {
      const original = history[m];
      history[m] = function (this: History, ...args: Parameters<History["pushState"]>) {
        original.apply(this, args);
        navigated();
      };
    }
    addEventListener("popstate", navigated);
    if (o.hash) addEventListener("hashchange", navigated);
    // A page restored from the back/forward cache runs no script again, yet it is seen again.
    addEventListener("pageshow", (ev) => {
      if (ev.persisted) {
        last = "";
        pageview();
      }
    });
    pageview();
  }
  if (o.outbound || o.downloads) {
    // A click follows the link; a middle click (auxclick with button 1, no
    // click) opens it in a new tab. Each counts once.
    const clicked = (ev: MouseEvent) => {
      if (ev.button != (ev.type == "click" ? 0 : 1)) return;
      const a = (ev.target as Element | null)?.closest?.("a");
      if (!a || !/^https?:/.test(a.href)) return;
      const u = new URL(a.href);
      if (o.downloads && FILES.test(u.pathname)) tracker.track("download", { url: a.href });
      else if (o.outbound && u.host != location.host) tracker.track("outbound", { url: a.href });
      flush(true); // the page may be about to unload
    };
    addEventListener("click", clicked);
    addEventListener("auxclick", clicked);
  }
  const leave = () => document.visibilityState == "hidden" && flush(true);
  addEventListener("pagehide", () => flush(true));
  document.addEventListener("visibilitychange", leave);
  addEventListener("online", () => flush());
  if (queue.length) schedule(0); // left over from an earlier page
  return tracker;
}
