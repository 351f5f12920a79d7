// The dashboard served at `/` by `tally serve`: signs in with a query key
// (kept in sessionStorage), then reads everything through the public API over
// grpc-web with the typed client. The URL's query string holds the view's
// state (see state.ts); every change of it re-reads what it affects.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createTallyClient,
  Metric,
  MetricType,
  type RealtimeReport,
  type RunReportResponse,
  type Session,
  type TallyClient,
} from "../src/index.js";
import { minuteBars, seriesChart, type Bucket } from "./chart.js";
import { fill, h } from "./dom.js";
import * as fmt from "./format.js";
import {
  CARDS,
  cardTab,
  dateRange,
  dimensionLabel,
  filterExpression,
  formatState,
  funnelSteps,
  HEADLINE,
  overviewRequest,
  parseState,
  propertyTable,
  seriesDimension,
  tableRequest,
  VIEWS,
  type Card,
  type Period,
  type ReportRequest,
  type State,
  type TableSpec,
  type View,
} from "./state.js";
import { timeKeys } from "./time.js";

const KEY = "tally_key";
const SITES = "tally_sites";

let state: State = parseState(location.search);
let client: TallyClient | undefined;
const app = document.getElementById("app")!;
const body = document.body;

// ---- requests: counted (for the tests' "settled" check), cancelled when superseded

let pending = 0;
body.dataset.busy = "0";
function tracked<T>(promise: Promise<T>): Promise<T> {
  body.dataset.busy = String(++pending);
  return promise.finally(() => (body.dataset.busy = String(--pending)));
}

function isCancel(error: unknown): boolean {
  return error instanceof ConnectError && error.code == Code.Canceled;
}

/** A short, readable reason; an unknown or revoked key signs out. */
function problem(error: unknown): string {
  if (!(error instanceof ConnectError)) return String(error);
  if (error.code == Code.Unauthenticated) signOut("The key was not accepted: it is unknown, revoked or expired.");
  if (error.code == Code.PermissionDenied) return `This key cannot read site "${state.site}".`;
  return error.rawMessage || Code[error.code];
}

function errorBox(error: unknown): HTMLElement {
  return h("p", { class: "error", role: "alert" }, problem(error));
}

// ---- navigation

/** Applies a change of state: the URL first (a new history entry unless `replace`), then the views. */
function navigate(change: Partial<State>, replace = false): void {
  state = { ...state, ...change };
  const url = location.pathname + formatState(state);
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

addEventListener("popstate", () => {
  state = parseState(location.search);
  render();
});

function signOut(message = ""): void {
  sessionStorage.removeItem(KEY);
  client = undefined;
  stopRealtime();
  shell = undefined;
  signIn(message);
}

function rememberedSites(): string[] {
  try {
    const sites = JSON.parse(localStorage.getItem(SITES) ?? "[]");
    return Array.isArray(sites) ? sites.filter((s) => typeof s == "string") : [];
  } catch {
    return [];
  }
}

function rememberSite(site: string): void {
  try {
    localStorage.setItem(SITES, JSON.stringify([site, ...rememberedSites().filter((s) => s != site)].slice(0, 20)));
  } catch {
    // Storage full or blocked: the site is simply not suggested next time.
  }
}

/**
 * The suggestions of a site input: the sites used before, filled in when the
 * input is first focused (the first read of localStorage can take a while,
 * and the first view does not need it).
 */
function siteList(input: HTMLInputElement): HTMLDataListElement {
  const list = h("datalist", { id: "sites" });
  let filled = false;
  input.addEventListener("focus", () => {
    if (filled) return;
    filled = true;
    const known = new Set([...list.options].map((o) => o.value));
    for (const site of rememberedSites()) if (!known.has(site)) list.append(h("option", { value: site }));
  });
  return list;
}

// ---- sign-in

function signIn(message = ""): void {
  document.title = "Tally";
  const error = h("p", { class: "error", role: "alert" }, message);
  const key = h("input", { name: "key", type: "password", autocomplete: "off", required: true, placeholder: "tly_qry_..." });
  const site = h("input", { name: "site", list: "sites", required: true, value: state.site, placeholder: "example.com" });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    {
      class: "signin",
      onsubmit: async (event: Event) => {
        event.preventDefault();
        button.disabled = true;
        error.textContent = "";
        const candidate = createTallyClient({ baseUrl: location.origin, key: key.value.trim() });
        const siteId = site.value.trim();
        try {
          await tracked(candidate.query.getMetadata({ siteId }));
        } catch (e) {
          const reason = e instanceof ConnectError ? e.code : undefined;
          error.textContent =
            reason == Code.Unauthenticated
              ? "This key is unknown, revoked or expired."
              : reason == Code.PermissionDenied
                ? `This key cannot read site "${siteId}".`
                : String(e instanceof ConnectError ? e.rawMessage : e);
          button.disabled = false;
          return;
        }
        sessionStorage.setItem(KEY, key.value.trim());
        rememberSite(siteId);
        client = candidate;
        navigate({ site: siteId }, true);
      },
    },
    h("h1", {}, "Tally"),
    h("p", { class: "hint" }, "Sign in with a query key of the site (or an admin key). It is kept in this tab only."),
    h("label", {}, "Key", key),
    h("label", {}, "Site", site, siteList(site)),
    button,
    error,
  );
  fill(app, form);
  (state.site ? key : site).focus();
  body.dataset.view = "signin";
}

// ---- the frame around every view: site, views, period, comparison, filters, realtime

interface Shell {
  site: HTMLInputElement;
  views: Map<View, HTMLAnchorElement>;
  periods: Map<Period, HTMLButtonElement>;
  from: HTMLInputElement;
  to: HTMLInputElement;
  custom: HTMLElement;
  compare: HTMLInputElement;
  filters: HTMLElement;
  view: HTMLElement;
  realtime: HTMLElement;
}
let shell: Shell | undefined;

const VIEW_NAMES: Record<View, string> = { overview: "Overview", funnel: "Funnel", sessions: "Sessions" };
const PERIOD_NAMES: Record<Period, string> = { today: "Today", "7d": "7 days", "30d": "30 days", custom: "Custom" };

function buildShell(): Shell {
  const site = h("input", { name: "site", list: "sites", "aria-label": "Site", value: state.site });
  const siteForm = h(
    "form",
    {
      class: "site",
      onsubmit: (event: Event) => {
        event.preventDefault();
        const siteId = site.value.trim();
        if (!siteId || siteId == state.site) return;
        rememberSite(siteId);
        navigate({ site: siteId, filters: [], prop: "", session: "" });
      },
    },
    site,
    siteList(site),
  );
  site.addEventListener("change", () => siteForm.requestSubmit());
  // Admin and operator keys may list every site (query keys may not: they are not asked).
  if (!sessionStorage.getItem(KEY)?.startsWith("tly_qry_")) {
    client!.admin
      .listSites({})
      .then(({ sites }) => {
        const list = siteForm.querySelector("datalist")!;
        for (const { siteId } of sites) list.append(h("option", { value: siteId }));
      })
      .catch(() => {});
  }
  const views = new Map(
    VIEWS.map((v) => [
      v,
      h(
        "a",
        {
          href: "#",
          "data-view": v,
          onclick: (event: Event) => {
            event.preventDefault();
            navigate({ view: v });
          },
        },
        VIEW_NAMES[v],
      ),
    ]),
  );
  const from = h("input", { type: "date", "aria-label": "From" });
  const to = h("input", { type: "date", "aria-label": "To" });
  const custom = h(
    "form",
    {
      class: "custom",
      onsubmit: (event: Event) => {
        event.preventDefault();
        if (from.value && to.value && from.value <= to.value) navigate({ period: "custom", from: from.value, to: to.value, session: "" });
      },
    },
    from,
    "\u2013",
    to,
    h("button", { type: "submit" }, "Apply"),
  );
  const periods = new Map(
    (["today", "7d", "30d", "custom"] as Period[]).map((p) => [
      p,
      h(
        "button",
        {
          type: "button",
          "data-period": p,
          onclick: () => {
            if (p != "custom") return navigate({ period: p, from: "", to: "", session: "" });
            custom.hidden = false;
            if (!from.value) {
              const today = new Date().toISOString().slice(0, 10);
              from.value = new Date(Date.now() - 6 * 86_400_000).toISOString().slice(0, 10);
              to.value = today;
            }
            from.focus();
          },
        },
        PERIOD_NAMES[p],
      ),
    ]),
  );
  const compare = h("input", { type: "checkbox", onchange: () => navigate({ compare: compare.checked }) });
  const filters = h("div", { class: "filters", "aria-label": "Filters" });
  const view = h("main", { id: "view" });
  const realtime = h("section", { class: "card realtime", "aria-label": "Realtime" });
  fill(
    app,
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "Tally"),
      siteForm,
      h("nav", { class: "views" }, ...views.values()),
      h("button", { type: "button", class: "link", onclick: () => signOut() }, "Sign out"),
    ),
    h(
      "div",
      { class: "controls" },
      h("div", { class: "periods", role: "group", "aria-label": "Date range" }, ...periods.values()),
      custom,
      h("label", { class: "compare" }, compare, "Compare with the previous period"),
    ),
    filters,
    view,
  );
  return { site, views, periods, from, to, custom, compare, filters, view, realtime };
}

function updateShell(s: Shell): void {
  s.site.value = state.site;
  for (const [v, link] of s.views) link.toggleAttribute("aria-current", v == state.view);
  for (const [p, button] of s.periods) button.setAttribute("aria-pressed", String(p == state.period));
  s.custom.hidden = state.period != "custom";
  if (state.period == "custom") {
    s.from.value = state.from;
    s.to.value = state.to;
  }
  s.compare.checked = state.compare;
  fill(
    s.filters,
    ...state.filters.map((f) =>
      h(
        "button",
        {
          type: "button",
          class: "chip",
          "data-dim": f.dim,
          "data-value": f.value,
          title: "Remove this filter",
          onclick: () => navigate({ filters: state.filters.filter((g) => g != f), session: "" }),
        },
        `${dimensionLabel(f.dim)} is `,
        h("b", {}, valueLabel(f.dim, f.value)),
        h("span", { "aria-hidden": "true" }, " \u00d7"),
      ),
    ),
  );
}

let rendered: { site: string; view: View } | undefined;

function render(): void {
  if (!client || !state.site) return signIn();
  document.title = `${state.site} \u00b7 Tally`;
  if (!shell) shell = buildShell();
  updateShell(shell);
  body.dataset.view = state.view;
  watchRealtime(shell.realtime);
  const same = rendered?.site == state.site && rendered.view == state.view;
  rendered = { site: state.site, view: state.view };
  if (state.view != "overview") current?.abort?.abort();
  if (state.view == "overview") overview(shell, same);
  else if (state.view == "funnel") funnel(shell.view);
  else sessions(shell.view);
}

// ---- value labels

const regions = (() => {
  try {
    return new Intl.DisplayNames(["en"], { type: "region" });
  } catch {
    return undefined;
  }
})();

/** How a dimension value reads: "(none)" for no value, country names with flags, capitalised device classes. */
function valueLabel(dim: string, value: string): string {
  if (value == "") return ["country", "device", "browser", "os"].includes(dim) ? "(unknown)" : "(none)";
  if (dim == "country" && /^[A-Z]{2}$/.test(value)) {
    const flag = String.fromCodePoint(...[...value].map((c) => 0x1f1a5 + c.charCodeAt(0)));
    return `${flag} ${regions?.of(value) ?? value}`;
  }
  if (dim == "device") return value[0].toUpperCase() + value.slice(1);
  return value;
}

// ---- overview

interface Overview {
  headline: Map<Metric, { card: HTMLElement; value: HTMLElement; change: HTMLElement }>;
  chart: HTMLElement;
  legend: HTMLElement;
  cards: Map<string, { card: Card | undefined; body: HTMLElement; tabs: HTMLElement }>;
  currency: HTMLSelectElement;
  /** The request each part shows the answer to (parts whose request is unchanged are not asked again). */
  shown: Map<string, string>;
  abort?: AbortController;
}
let current: Overview | undefined;

const HEADLINE_NAMES: Record<number, string> = {
  [Metric.VISITORS]: "Visitors",
  [Metric.VISITS]: "Visits",
  [Metric.PAGEVIEWS]: "Page views",
  [Metric.VIEWS_PER_VISIT]: "Views per visit",
  [Metric.BOUNCE_RATE]: "Bounce rate",
  [Metric.VISIT_DURATION]: "Visit duration",
  [Metric.REVENUE]: "Revenue",
};
const METRIC_KEYS: Record<number, string> = {
  [Metric.VISITORS]: "visitors",
  [Metric.VISITS]: "visits",
  [Metric.PAGEVIEWS]: "pageviews",
  [Metric.VIEWS_PER_VISIT]: "views_per_visit",
  [Metric.BOUNCE_RATE]: "bounce_rate",
  [Metric.VISIT_DURATION]: "visit_duration",
  [Metric.REVENUE]: "revenue",
};
const CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "INR", "BRL"];

function buildOverview(view: HTMLElement, realtime: HTMLElement): Overview {
  const headline = new Map<Metric, { card: HTMLElement; value: HTMLElement; change: HTMLElement }>();
  const currency = h("select", { "aria-label": "Revenue currency", onchange: () => navigate({ currency: currency.value }) });
  for (const metric of HEADLINE) {
    const value = h("div", { class: "value" }, "\u2026");
    const change = h("div", { class: "change" });
    const label = h("div", { class: "label" }, HEADLINE_NAMES[metric]);
    if (metric == Metric.REVENUE) label.append(" ", currency);
    const card = h("div", { class: "metric", "data-metric": METRIC_KEYS[metric] }, label, value, change);
    headline.set(metric, { card, value, change });
  }
  const legend = h(
    "div",
    { class: "legend" },
    h("span", { class: "key visitors" }, "Visitors"),
    h("span", { class: "key pageviews" }, "Page views"),
    h("span", { class: "key previous" }, "Visitors, previous period"),
  );
  const chart = h("div", { class: "chart" });
  const cards = new Map<string, { card: Card | undefined; body: HTMLElement; tabs: HTMLElement }>();
  const grid = h("div", { class: "grid" });
  for (const card of [...CARDS, undefined]) {
    const id = card?.id ?? "props";
    const tabs = h("div", { class: "tabs", role: "tablist" });
    const cardBody = h("div", { class: "rows" });
    cards.set(id, { card, body: cardBody, tabs });
    grid.append(h("section", { class: "card table", "data-card": id }, h("header", {}, h("h2", {}, card?.title ?? "Properties"), tabs), cardBody));
  }
  fill(
    view,
    h("section", { class: "headline", "aria-label": "Headline metrics" }, ...[...headline.values()].map((m) => m.card)),
    h("div", { class: "split" }, h("section", { class: "card series" }, legend, chart), realtime),
    grid,
  );
  return { headline, chart, legend, cards, currency, shown: new Map() };
}

/** Shows the overview; `same` keeps the old numbers on screen until the new ones arrive. */
function overview(s: Shell, same: boolean): void {
  const view = s.view;
  if (!same || !current || !view.contains(current.chart)) current = buildOverview(view, s.realtime);
  const o = current;
  o.abort?.abort();
  const abort = new AbortController();
  o.abort = abort;
  const signal = abort.signal;
  const snapshot = state;
  fill(o.currency, ...[...new Set([...CURRENCIES, state.currency])].map((c) => h("option", { value: c, selected: c == state.currency }, c)));
  o.legend.classList.toggle("compared", state.compare);
  view.classList.add("loading");

  // The properties card first: its report waits for the site's property keys.
  const loads = [loadProperties(o, o.cards.get("props")!, snapshot, signal), loadOverview(o, snapshot, signal)];
  for (const entry of o.cards.values()) if (entry.card) loads.push(loadCard(o, entry.card, entry, snapshot, signal));
  Promise.allSettled(loads).then(() => {
    if (signal.aborted) return;
    view.classList.remove("loading");
    settled(snapshot);
  });
}

/** Marks the view as showing `snapshot` (the tests wait for this), and times the first view. */
function settled(snapshot: State): void {
  if (snapshot !== state) return;
  body.dataset.loaded = formatState(snapshot);
  if (body.dataset.firstView) return;
  body.dataset.firstView = String(Math.round(performance.now()));
  // A site opened by its URL is remembered too, once the first view is shown.
  setTimeout(() => rememberSite(state.site));
}

/** A metric value as a number (counts arrive as bigint). */
function num(value: { case: "intValue"; value: bigint } | { case: "doubleValue"; value: number } | { case: undefined; value?: undefined }): number {
  return value.case == "intValue" ? Number(value.value) : value.case == "doubleValue" ? value.value : 0;
}

function formatMetric(type: MetricType, value: number, currency: string): string {
  switch (type) {
    case MetricType.INTEGER:
      return fmt.count(value);
    case MetricType.PERCENT:
      return fmt.percent(value);
    case MetricType.SECONDS:
      return fmt.duration(value);
    case MetricType.CURRENCY:
      return fmt.money(value, currency);
    default:
      return fmt.ratio(value);
  }
}

/**
 * Runs the report of one part of the overview (`slot`), unless that part
 * already shows the answer to this very request (say, after another card's
 * tab changed): then undefined.
 */
async function ask(o: Overview, slot: string, request: ReportRequest, signal: AbortSignal): Promise<RunReportResponse | undefined> {
  const key = JSON.stringify(request, (_, v) => (typeof v == "bigint" ? String(v) : v));
  if (o.shown.get(slot) == key) return undefined;
  o.shown.delete(slot);
  const report = await tracked(client!.query.runReport(request, { signal }));
  o.shown.set(slot, key);
  return report;
}

/** The headline cards and the chart, from one report (see {@link overviewRequest}). */
async function loadOverview(o: Overview, snapshot: State, signal: AbortSignal): Promise<void> {
  let report: RunReportResponse;
  try {
    const answer = await ask(o, "overview", overviewRequest(snapshot), signal);
    if (!answer) return;
    report = answer;
  } catch (error) {
    if (isCancel(error)) return;
    for (const m of o.headline.values()) fill(m.value, "\u2013"), fill(m.change);
    fill(o.chart, errorBox(error));
    return;
  }
  showHeadline(o, report, snapshot);
  showSeries(o, report, snapshot);
}

function showHeadline(o: Overview, report: RunReportResponse, snapshot: State): void {
  const totals = report.totals[0];
  report.metricHeaders.forEach((header, i) => {
    const slot = o.headline.get(header.metric);
    const value = totals?.metricValues[i];
    if (!slot) return;
    const number = value ? num(value.value) : 0;
    slot.value.textContent = formatMetric(header.type, number, snapshot.currency);
    slot.card.dataset.value = String(number);
    const change = value?.comparison?.change;
    delete slot.card.dataset.change;
    slot.change.className = "change";
    if (!snapshot.compare) slot.change.textContent = "";
    else if (change == null) slot.change.textContent = "no data before";
    else {
      slot.card.dataset.change = String(change);
      // A falling bounce rate is the good news.
      const good = header.metric == Metric.BOUNCE_RATE ? change < 0 : change > 0;
      slot.change.textContent = `${fmt.change(change)} vs previous period`;
      if (Math.round(change * 100) != 0) slot.change.classList.add(good ? "up" : "down");
    }
  });
}

function showSeries(o: Overview, report: RunReportResponse, snapshot: State): void {
  const column = (metric: Metric) => report.metricHeaders.findIndex((h) => h.metric == metric);
  const [visitors, pageviews] = [column(Metric.VISITORS), column(Metric.PAGEVIEWS)];
  const range = report.metadata?.resolvedRanges[0];
  const rows = new Map(report.rows.map((row) => [row.dimensionValues[0], row]));
  const keys =
    range?.startTime && range.endTime
      ? timeKeys(timestampDate(range.startTime), timestampDate(range.endTime), report.metadata!.timeZone || "UTC", seriesDimension(snapshot))
      : report.rows.map((row) => ({ key: row.dimensionValues[0], label: row.dimensionValues[0] }));
  const buckets: Bucket[] = keys.map(({ key, label }) => {
    const row = rows.get(key);
    const previous = row?.metricValues[visitors].comparison?.previous;
    return {
      key,
      label,
      visitors: row ? num(row.metricValues[visitors].value) : 0,
      pageviews: row ? num(row.metricValues[pageviews].value) : 0,
      previous: snapshot.compare ? (previous?.case == "previousInt" ? Number(previous.value) : 0) : undefined,
    };
  });
  fill(o.chart, seriesChart(buckets, o.chart.clientWidth || 800));
}

/** Fills a table body with a report's rows: a row click filters on its value. */
function table(target: HTMLElement, spec: TableSpec, report: RunReportResponse, snapshot: State): void {
  const max = Math.max(1, ...report.rows.map((row) => num(row.metricValues[0].value)));
  const active = snapshot.filters.find((f) => f.dim == spec.dim);
  const rows = report.rows.map((row) => {
    const value = row.dimensionValues[0];
    const numbers = row.metricValues.map((v) => num(v.value));
    const bar = h("span", { class: "fill" });
    bar.style.width = `${(numbers[0] / max) * 100}%`;
    const apply = () =>
      navigate({ filters: [...snapshot.filters.filter((f) => f.dim != spec.dim), { dim: spec.dim, value }], session: "" });
    return h(
      "tr",
      {
        tabindex: 0,
        "data-value": value,
        title: `Show only ${dimensionLabel(spec.dim).toLowerCase()} ${valueLabel(spec.dim, value)}`,
        class: active?.value == value ? "active" : null,
        onclick: apply,
        onkeydown: (event: Event) => (event as KeyboardEvent).key == "Enter" && apply(),
      },
      h("td", { class: "name" }, bar, h("span", {}, valueLabel(spec.dim, value))),
      ...numbers.map((n) => h("td", { "data-value": n }, fmt.count(n))),
    );
  });
  const more = Number(report.rowCount) - report.rows.length;
  fill(
    target,
    rows.length
      ? h(
          "table",
          { "data-dim": spec.dim },
          h("thead", {}, h("tr", {}, h("th", {}, dimensionLabel(spec.dim)), ...spec.columns.map(([title]) => h("th", {}, title)))),
          h("tbody", {}, ...rows),
        )
      : h("p", { class: "empty" }, "Nothing in this period."),
    more > 0 && h("p", { class: "more" }, `and ${fmt.count(more)} more`),
  );
}

async function loadCard(o: Overview, card: Card, entry: { body: HTMLElement; tabs: HTMLElement }, snapshot: State, signal: AbortSignal): Promise<void> {
  const tab = cardTab(snapshot, card);
  fill(
    entry.tabs,
    ...(card.tabs.length > 1
      ? card.tabs.map((t) =>
          h(
            "button",
            {
              type: "button",
              role: "tab",
              "data-tab": t.dim,
              "aria-selected": String(t == tab),
              onclick: () => navigate({ tabs: { ...state.tabs, [card.id]: t.dim } }, true),
            },
            t.label,
          ),
        )
      : []),
  );
  try {
    const report = await ask(o, card.id, tableRequest(snapshot, tab), signal);
    if (report) table(entry.body, tab, report, snapshot);
  } catch (error) {
    if (!isCancel(error)) fill(entry.body, errorBox(error));
  }
}

let propertyKeys: { site: string; keys: string[] } | undefined;

async function loadProperties(o: Overview, entry: { body: HTMLElement; tabs: HTMLElement }, snapshot: State, signal: AbortSignal): Promise<void> {
  try {
    if (propertyKeys?.site != snapshot.site) {
      const metadata = await tracked(client!.query.getMetadata({ siteId: snapshot.site }, { signal }));
      propertyKeys = { site: snapshot.site, keys: metadata.propertyKeys.map((p) => p.key).sort() };
    }
    const keys = propertyKeys.keys;
    if (!keys.length) {
      fill(entry.tabs);
      fill(entry.body, h("p", { class: "empty" }, "No custom properties yet."));
      return;
    }
    const key = keys.includes(snapshot.prop) ? snapshot.prop : keys[0];
    const select = h(
      "select",
      { "aria-label": "Property", onchange: () => navigate({ prop: select.value }, true) },
      ...keys.map((k) => h("option", { value: k, selected: k == key }, k)),
    );
    fill(entry.tabs, select);
    const spec = propertyTable(key);
    const report = await ask(o, "props", tableRequest(snapshot, spec), signal);
    if (report) table(entry.body, spec, report, snapshot);
  } catch (error) {
    if (!isCancel(error)) fill(entry.body, errorBox(error));
  }
}

// ---- realtime

let realtime: { site: string; abort: AbortController } | undefined;

function stopRealtime(): void {
  realtime?.abort.abort();
  realtime = undefined;
}

/** Keeps one WatchRealtime stream open for the site, reconnecting with backoff. */
function watchRealtime(panel: HTMLElement): void {
  if (realtime?.site == state.site) return;
  stopRealtime();
  const abort = new AbortController();
  const siteId = state.site;
  realtime = { site: siteId, abort };
  const active = h("strong", { class: "active" }, "\u2026");
  const status = h("span", { class: "status" }, "connecting");
  const bars = h("div", { class: "bars" });
  const pages = h("ol", { class: "now" });
  fill(
    panel,
    h("h2", {}, h("span", { class: "pulse", "aria-hidden": "true" }), "Right now"),
    h("p", {}, active, " visitors in the last 5 minutes"),
    bars,
    h("div", { class: "axis" }, h("span", {}, "\u221230 min"), h("span", {}, "now")),
    pages,
    status,
  );
  const show = (report: RealtimeReport) => {
    active.textContent = fmt.count(Number(report.activeVisitors));
    panel.dataset.active = String(report.activeVisitors);
    panel.dataset.snapshots = String(Number(panel.dataset.snapshots ?? 0) + 1);
    const minutes = report.minutes.map((m) => ({
      minute: m.minute ? timestampDate(m.minute) : new Date(),
      pageviews: Number(m.pageviews),
      visitors: Number(m.visitors),
    }));
    panel.dataset.pageviews = String(minutes.reduce((sum, m) => sum + m.pageviews, 0));
    fill(bars, minuteBars(minutes));
    fill(pages, ...report.topPages.slice(0, 5).map((p) => h("li", {}, h("span", {}, p.value || "(none)"), h("b", {}, fmt.count(Number(p.visitors))))));
  };
  (async () => {
    let delay = 1000;
    while (!abort.signal.aborted) {
      try {
        const stream = client!.query.watchRealtime({ siteId, heartbeatInterval: { seconds: 15n } }, { signal: abort.signal });
        for await (const update of stream) {
          delay = 1000;
          status.textContent = "live";
          panel.classList.remove("stale");
          if (update.update.case == "snapshot") show(update.update.value);
        }
      } catch (error) {
        if (abort.signal.aborted) return;
        if (error instanceof ConnectError && (error.code == Code.Unauthenticated || error.code == Code.PermissionDenied)) {
          fill(panel, errorBox(error));
          return;
        }
      }
      // The stream ended (server restart, network): show it, then watch again.
      status.textContent = "reconnecting";
      panel.classList.add("stale");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 30_000);
    }
  })();
}

// ---- funnel

function funnel(view: HTMLElement): void {
  const inputs = h("ol", { class: "steps" });
  const addStep = (value = "") =>
    inputs.append(h("li", {}, h("input", { name: "step", value, placeholder: "/pricing or signup", "aria-label": "Step" })));
  for (const step of state.steps) addStep(step);
  while (inputs.children.length < Math.max(3, state.steps.length + 1)) addStep();
  const windowSelect = h(
    "select",
    { name: "window", "aria-label": "Conversion window" },
    ...[
      [1, "1 hour"],
      [24, "1 day"],
      [168, "7 days"],
      [720, "30 days"],
    ].map(([hours, label]) => h("option", { value: hours, selected: hours == state.window }, label)),
  );
  const result = h("div", { class: "funnel" });
  const form = h(
    "form",
    {
      class: "card funnel-form",
      onsubmit: (event: Event) => {
        event.preventDefault();
        const steps = [...inputs.querySelectorAll("input")].map((i) => i.value.trim()).filter((v) => v);
        navigate({ steps, window: Number(windowSelect.value) });
      },
    },
    h("h2", {}, "Funnel"),
    h("p", { class: "hint" }, "Steps in order: a page path (\u201c/pricing\u201d, or \u201c/blog/*\u201d for a prefix) or a custom event name. Visitors must take the first step in the date range and the last within the window."),
    inputs,
    h("div", { class: "actions" }, h("button", { type: "button", class: "link", onclick: () => addStep() }, "+ Add a step"), h("label", {}, "Within ", windowSelect), h("button", { type: "submit" }, "Show funnel")),
  );
  fill(view, form, result);
  const snapshot = state;
  if (snapshot.steps.length < 2) {
    fill(result, h("p", { class: "empty" }, "Enter at least two steps."));
    return settled(snapshot);
  }
  tracked(
    client!.query.runFunnelReport({
      siteId: snapshot.site,
      dateRange: dateRange(snapshot),
      steps: funnelSteps(snapshot),
      conversionWindow: { seconds: BigInt(snapshot.window * 3600) },
      filter: filterExpression(snapshot.filters),
    }),
  )
    .then((report) => {
      if (state != snapshot) return;
      const first = Math.max(1, Number(report.steps[0]?.visitors ?? 0));
      fill(
        result,
        h(
          "ol",
          { class: "card funnel-steps" },
          ...report.steps.map((step, i) => {
            const bar = h("span", { class: "fill" });
            bar.style.width = `${(Number(step.visitors) / first) * 100}%`;
            const median = step.medianTimeFromPrevious;
            return h(
              "li",
              { "data-visitors": String(step.visitors), "data-step": step.name },
              h("div", { class: "step-name" }, h("b", {}, `${i + 1}. `), step.name),
              h("div", { class: "step-bar" }, bar, h("span", {}, `${fmt.count(Number(step.visitors))} visitors`)),
              h(
                "div",
                { class: "step-stats" },
                `${fmt.percent(step.conversionFromFirst)} of the first step`,
                i > 0 && ` \u00b7 ${fmt.percent(step.conversionFromPrevious)} of the previous \u00b7 ${fmt.count(Number(step.dropOff))} dropped off`,
                i > 0 && median && ` \u00b7 median ${fmt.duration(Number(median.seconds) + median.nanos / 1e9)} after it`,
              ),
            );
          }),
        ),
      );
      settled(snapshot);
    })
    .catch((error) => {
      fill(result, errorBox(error));
      settled(snapshot);
    });
}

// ---- sessions

const DEVICES = ["", "Desktop", "Mobile", "Tablet", "TV", "Console", "Bot"];
const dateTime = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "medium" });
const shortTime = new Intl.DateTimeFormat("en-GB", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
const clock = new Intl.DateTimeFormat("en-GB", { timeStyle: "medium" });

/** The session explorer on screen: its list is kept while only the open visit changes. */
let explorer: { list: string; view: HTMLElement; rows: HTMLElement; detail: HTMLElement } | undefined;

function sessions(view: HTMLElement): void {
  const snapshot = state;
  const listKey = formatState({ ...snapshot, session: "" });
  if (explorer?.list == listKey && view.contains(explorer.detail)) {
    // Another visit opened or closed: the list stays as it is (with its pages).
    const { rows, detail } = explorer;
    for (const row of rows.querySelectorAll<HTMLElement>("tr")) row.classList.toggle("active", row.dataset.session == snapshot.session);
    openSession(detail, snapshot).finally(() => settled(snapshot));
    return;
  }
  const list = h("div", { class: "card sessions" }, h("p", { class: "empty" }, "\u2026"));
  const detail = h("div", { class: "card session" });
  const rows = h("tbody");
  fill(view, h("div", { class: "explorer" }, list, detail));
  explorer = { list: listKey, view, rows, detail };
  const shown = (async () => {
    // The report resolves the period to instants in the site's time zone.
    const filter = filterExpression(snapshot.filters);
    const report = await tracked(
      client!.query.runReport({ siteId: snapshot.site, metrics: [Metric.VISITS], dateRanges: [dateRange(snapshot)], filter }),
    );
    const range = report.metadata!.resolvedRanges[0];
    const total = report.totals[0]?.metricValues[0];
    const visits = total ? num(total.value) : 0;
    const more = h("button", { type: "button", class: "link", hidden: true }, "Load more");
    fill(
      list,
      h("h2", {}, `Visits`, h("span", { class: "count", "data-value": visits }, ` ${fmt.count(visits)} in this period`)),
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ...["Started", "Duration", "Pages", "Entry \u2192 exit", "Source", "Device", "Country"].map((t) => h("th", {}, t)))),
        rows,
      ),
      more,
    );
    const page = async (token: string) => {
      const answer = await tracked(client!.session.listSessions({ siteId: snapshot.site, timeRange: range, filter, pageSize: 50, pageToken: token }));
      for (const visit of answer.sessions) rows.append(sessionRow(visit));
      more.hidden = !answer.nextPageToken;
      more.onclick = () => page(answer.nextPageToken).catch((error) => list.append(errorBox(error)));
      if (!answer.sessions.length && !token) list.append(h("p", { class: "empty" }, "No visits in this period."));
    };
    await page("");
  })().catch((error) => fill(list, errorBox(error)));
  Promise.all([shown, openSession(detail, snapshot)]).finally(() => settled(snapshot));
}

function sessionRow(visit: Session): HTMLElement {
  const open = () => navigate({ session: visit.sessionId });
  return h(
    "tr",
    {
      tabindex: 0,
      "data-session": visit.sessionId,
      class: visit.sessionId == state.session ? "active" : null,
      onclick: open,
      onkeydown: (event: Event) => (event as KeyboardEvent).key == "Enter" && open(),
    },
    h("td", { title: visit.startTime ? dateTime.format(timestampDate(visit.startTime)) : "" }, visit.startTime ? shortTime.format(timestampDate(visit.startTime)) : ""),
    h("td", {}, fmt.duration(Number(visit.duration?.seconds ?? 0))),
    h("td", { "data-value": String(visit.pageviews) }, fmt.count(Number(visit.pageviews))),
    h("td", {}, `${visit.entryPage || "(none)"} \u2192 ${visit.exitPage || "(none)"}`),
    h("td", {}, visit.source || "(none)"),
    h("td", { title: DEVICES[visit.deviceType] }, [visit.browser, visit.os].filter(Boolean).join(", ") || "(unknown)"),
    h("td", {}, valueLabel("country", visit.country)),
  );
}

/** Shows the state's open visit in `detail` (hidden when none is open). */
function openSession(detail: HTMLElement, snapshot: State): Promise<void> {
  detail.hidden = !snapshot.session;
  if (!snapshot.session) return Promise.resolve();
  fill(detail, h("p", { class: "empty" }, "\u2026"));
  return tracked(client!.session.getSession({ siteId: snapshot.site, sessionId: snapshot.session }))
    .then((visit) => {
      if (state.session != snapshot.session) return; // another visit was opened meanwhile
      const start = visit.startTime ? timestampDate(visit.startTime).getTime() : 0;
      const facts: [string, string][] = [
        ["Started", visit.startTime ? dateTime.format(timestampDate(visit.startTime)) : ""],
        ["Duration", fmt.duration(Number(visit.duration?.seconds ?? 0))],
        ["Page views", fmt.count(Number(visit.pageviews))],
        ["Bounce", visit.bounce ? "yes" : "no"],
        ["Source", [visit.source, visit.medium, visit.campaign].filter(Boolean).join(" / ") || "(none)"],
        ["Referrer", visit.referrer || "(none)"],
        ["Device", [DEVICES[visit.deviceType], visit.browser, visit.os].filter(Boolean).join(", ") || "(unknown)"],
        ["Location", [visit.city, visit.region, visit.country].filter(Boolean).join(", ") || "(unknown)"],
        ["Visitor", visit.visitorId + (visit.userId ? ` (user ${visit.userId})` : "")],
      ];
      fill(
        detail,
        h("header", {}, h("h2", {}, "Visit"), h("button", { type: "button", class: "link", onclick: () => navigate({ session: "" }) }, "Close")),
        h("dl", {}, ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        h(
          "ol",
          { class: "timeline" },
          ...visit.recordedEvents.map((e) => {
            const at = e.timestamp ? timestampDate(e.timestamp) : undefined;
            const props = Object.entries(e.properties).map(([k, v]) => `${k}=${v.value.value}`);
            return h(
              "li",
              { "data-name": e.name, "data-path": e.path },
              h("time", { title: at ? dateTime.format(at) : "" }, at ? `+${fmt.duration((at.getTime() - start) / 1000)} ${clock.format(at)}` : ""),
              h("b", {}, e.name == "pageview" ? "Page view" : e.name),
              h("span", {}, e.path),
              props.length > 0 && h("small", {}, props.join(", ")),
              e.revenue && h("small", {}, fmt.money(Number(e.revenue.units) + e.revenue.nanos / 1e9, e.revenue.currencyCode)),
            );
          }),
        ),
      );
    })
    .catch((error) => fill(detail, errorBox(error)));
}

// ---- start

const saved = sessionStorage.getItem(KEY);
if (saved) client = createTallyClient({ baseUrl: location.origin, key: saved });
// A shared URL in its canonical form (what the view would write itself).
history.replaceState(null, "", location.pathname + formatState(state));
render();
