// What the dashboard shows, as a plain object that round-trips through the
// URL's query string (so a view can be shared), and the report requests it
// stands for. No DOM here: the Node tests import this file as is.
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ComparisonMode,
  Dimension,
  MatchType,
  Metric,
  type DimensionSpec,
  type DimensionSpecSchema,
  type FilterExpression,
  type FilterExpressionSchema,
  type RunReportRequest,
  type RunReportRequestSchema,
} from "../src/gen/tally/v1/query_pb.js";

// The plain-object forms of the messages (what `create` and the client take).
export type ReportRequest = Exclude<MessageInitShape<typeof RunReportRequestSchema>, RunReportRequest>;
export type FilterInit = Exclude<MessageInitShape<typeof FilterExpressionSchema>, FilterExpression>;
type DimensionInit = Exclude<MessageInitShape<typeof DimensionSpecSchema>, DimensionSpec>;

/** Date range presets; "custom" uses `from` and `to`. */
export type Period = "today" | "7d" | "30d" | "custom";
export const PERIODS: Period[] = ["today", "7d", "30d", "custom"];

/** The dashboard's pages. */
export type View = "overview" | "funnel" | "sessions";
export const VIEWS: View[] = ["overview", "funnel", "sessions"];

/** An exact match on one dimension: a key of {@link DIMENSIONS} or `prop.<key>` for a custom property. */
export interface FilterSpec {
  dim: string;
  value: string;
}

/** Everything a view depends on. */
export interface State {
  site: string;
  period: Period;
  /** First and last day (YYYY-MM-DD) of a custom range. */
  from: string;
  to: string;
  /** Compare with the previous period of the same length. */
  compare: boolean;
  filters: FilterSpec[];
  view: View;
  /** The tab shown by each table card that has tabs (card id -> dimension key). */
  tabs: Record<string, string>;
  /** The custom property whose values the properties card lists. */
  prop: string;
  /** Revenue currency (ISO 4217). */
  currency: string;
  /** Funnel steps: "/path" (page, exact; "/path*" for a prefix) or an event name. */
  steps: string[];
  /** Funnel conversion window, in hours. */
  window: number;
  /** The visit the session explorer shows. */
  session: string;
}

/** The standard dimensions a row click can filter on, by their URL key. */
export const DIMENSIONS: Record<string, { label: string; dimension: Dimension }> = {
  page: { label: "Page", dimension: Dimension.PAGE },
  entry: { label: "Entry page", dimension: Dimension.ENTRY_PAGE },
  exit: { label: "Exit page", dimension: Dimension.EXIT_PAGE },
  source: { label: "Source", dimension: Dimension.SOURCE },
  medium: { label: "Medium", dimension: Dimension.MEDIUM },
  campaign: { label: "Campaign", dimension: Dimension.CAMPAIGN },
  country: { label: "Country", dimension: Dimension.COUNTRY },
  device: { label: "Device", dimension: Dimension.DEVICE_TYPE },
  browser: { label: "Browser", dimension: Dimension.BROWSER },
  os: { label: "OS", dimension: Dimension.OS },
  event: { label: "Event", dimension: Dimension.EVENT_NAME },
};

const PROPERTY = "prop.";
const DAY = /^\d{4}-\d{2}-\d{2}$/;
export const DEFAULT_WINDOW_HOURS = 168;

/** The state of a URL's query string (`location.search`); unknown or malformed parts fall back to defaults. */
export function parseState(search: string): State {
  const q = new URLSearchParams(search);
  const period = PERIODS.find((p) => p == q.get("period")) ?? "30d";
  const from = q.get("from") ?? "";
  const to = q.get("to") ?? "";
  const custom = period == "custom" && DAY.test(from) && DAY.test(to) && from <= to;
  const tabs: Record<string, string> = {};
  for (const card of CARDS) {
    const tab = q.get(card.id);
    if (tab && card.tabs.some((t) => t.dim == tab)) tabs[card.id] = tab;
  }
  const window = Number(q.get("window"));
  return {
    site: q.get("site") ?? "",
    period: period == "custom" && !custom ? "30d" : period,
    from: custom ? from : "",
    to: custom ? to : "",
    compare: q.get("compare") != "0",
    filters: q.getAll("f").flatMap((f) => {
      const colon = f.indexOf(":");
      const spec = { dim: f.slice(0, colon), value: f.slice(colon + 1) };
      return colon > 0 && isFilterDimension(spec.dim) ? [spec] : [];
    }),
    view: VIEWS.find((v) => v == q.get("view")) ?? "overview",
    tabs,
    prop: q.get("prop") ?? "",
    currency: /^[A-Z]{3}$/.test(q.get("cur") ?? "") ? q.get("cur")! : "USD",
    steps: q.getAll("step").filter((s) => s.trim() != ""),
    window: Number.isInteger(window) && window > 0 && window <= 2160 ? window : DEFAULT_WINDOW_HOURS,
    session: q.get("session") ?? "",
  };
}

/** The query string (with "?", or "" when everything is default) of a state; defaults are left out. */
export function formatState(state: State): string {
  const q = new URLSearchParams();
  if (state.site) q.set("site", state.site);
  if (state.view != "overview") q.set("view", state.view);
  if (state.period != "30d") q.set("period", state.period);
  if (state.period == "custom") {
    q.set("from", state.from);
    q.set("to", state.to);
  }
  if (!state.compare) q.set("compare", "0");
  for (const f of state.filters) q.append("f", `${f.dim}:${f.value}`);
  for (const [card, tab] of Object.entries(state.tabs)) q.set(card, tab);
  if (state.prop) q.set("prop", state.prop);
  if (state.currency != "USD") q.set("cur", state.currency);
  for (const step of state.steps) q.append("step", step);
  if (state.window != DEFAULT_WINDOW_HOURS) q.set("window", String(state.window));
  if (state.session) q.set("session", state.session);
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** True for a key of {@link DIMENSIONS} or a valid `prop.<key>`. */
export function isFilterDimension(dim: string): boolean {
  return dim in DIMENSIONS || (dim.startsWith(PROPERTY) && /^[A-Za-z0-9_.-]{1,}$/.test(dim.slice(PROPERTY.length)));
}

/** The report dimension of a filter or table key. */
export function dimensionSpec(dim: string): DimensionInit {
  if (dim.startsWith(PROPERTY)) return { kind: { case: "property", value: dim.slice(PROPERTY.length) } };
  return { kind: { case: "standard", value: DIMENSIONS[dim].dimension } };
}

/** A readable name of a filter or table key. */
export function dimensionLabel(dim: string): string {
  return dim.startsWith(PROPERTY) ? dim.slice(PROPERTY.length) : DIMENSIONS[dim]?.label ?? dim;
}

/** The `prop.<key>` dimension key of a custom property. */
export function propertyDimension(key: string): string {
  return PROPERTY + key;
}

/** The date range of the state's period, in the API's terms. */
export function dateRange(state: State): { startDate: string; endDate: string } {
  switch (state.period) {
    case "today":
      return { startDate: "today", endDate: "today" };
    case "7d":
      return { startDate: "6daysAgo", endDate: "today" };
    case "custom":
      return { startDate: state.from, endDate: state.to };
    default:
      return { startDate: "29daysAgo", endDate: "today" };
  }
}

/**
 * One condition per filter, all of which must hold: an exact, case-sensitive
 * match, or "has no value" for the empty value (what a row shows as "(none)").
 */
export function filterExpression(filters: FilterSpec[], extra: FilterInit[] = []): FilterInit | undefined {
  const conditions: FilterInit[] = filters.map(({ dim, value }) => ({
    expr: {
      case: "filter",
      value: {
        dimension: dimensionSpec(dim),
        condition:
          value == ""
            ? { case: "isSet", value: false }
            : { case: "stringMatch", value: { matchType: MatchType.EXACT, value, caseSensitive: true } },
      },
    },
  }));
  conditions.push(...extra);
  if (conditions.length == 0) return undefined;
  if (conditions.length == 1) return conditions[0];
  return { expr: { case: "andGroup", value: { expressions: conditions } } };
}

/** The headline metrics, in the order the dashboard shows them. */
export const HEADLINE: Metric[] = [
  Metric.VISITORS,
  Metric.VISITS,
  Metric.PAGEVIEWS,
  Metric.VIEWS_PER_VISIT,
  Metric.BOUNCE_RATE,
  Metric.VISIT_DURATION,
  Metric.REVENUE,
];

/** The fields every report of a state shares: site, range, filters, comparison. */
function base(state: State, extra: FilterInit[] = []): ReportRequest {
  return {
    siteId: state.site,
    dateRanges: [dateRange(state)],
    filter: filterExpression(state.filters, extra),
    comparison: state.compare ? ComparisonMode.PREVIOUS_PERIOD : ComparisonMode.UNSPECIFIED,
  };
}

/** Time buckets of the chart: hours for one day, days up to 92 days, then ISO weeks. */
export function seriesDimension(state: State): Dimension {
  if (state.period == "today") return Dimension.TIME_HOUR;
  if (state.period != "custom") return Dimension.TIME_DAY;
  const days = (Date.parse(state.to) - Date.parse(state.from)) / 86_400_000 + 1;
  return days <= 1 ? Dimension.TIME_HOUR : days <= 92 ? Dimension.TIME_DAY : Dimension.TIME_WEEK;
}

/**
 * The headline numbers and the chart in one report: every headline metric
 * by time bucket. The totals are the headline (with the previous period's
 * values and the change), the rows the chart.
 */
export function overviewRequest(state: State): ReportRequest {
  return {
    ...base(state),
    metrics: HEADLINE,
    dimensions: [{ kind: { case: "standard", value: seriesDimension(state) } }],
    revenueCurrency: state.currency,
    limit: 10_000n,
  };
}

/** A table of the overview: what it lists and counts. */
export interface TableSpec {
  /** Dimension key (of {@link DIMENSIONS}, or `prop.<key>`). */
  dim: string;
  /** Column titles and metrics; the first metric orders the rows. */
  columns: [string, Metric][];
  /** Conditions of this table only, added to the state's filters. */
  extra?: FilterInit[];
}

/** Rows per table. */
export const TABLE_ROWS = 10;

/** The table request: the top {@link TABLE_ROWS} values of one dimension. */
export function tableRequest(state: State, table: TableSpec): ReportRequest {
  return {
    ...base(state, table.extra),
    comparison: ComparisonMode.UNSPECIFIED,
    metrics: table.columns.map(([, metric]) => metric),
    dimensions: [dimensionSpec(table.dim)],
    limit: BigInt(TABLE_ROWS),
  };
}

/** A condition that only custom events pass (for the events card). */
export const CUSTOM_EVENTS: FilterInit = {
  expr: {
    case: "filter",
    value: {
      dimension: { kind: { case: "standard", value: Dimension.EVENT_TYPE } },
      condition: { case: "stringMatch", value: { matchType: MatchType.EXACT, value: "custom" } },
    },
  },
};

/** A condition that only events carrying property `key` pass (for the properties card). */
export function hasProperty(key: string): FilterInit {
  return {
    expr: { case: "filter", value: { dimension: { kind: { case: "property", value: key } }, condition: { case: "isSet", value: true } } },
  };
}

/** Funnel steps of the state: "/path" a page (exact; "/path*" a prefix), anything else a custom event name. */
export function funnelSteps(state: State) {
  return state.steps.map((step) => {
    const text = step.trim();
    if (!text.startsWith("/")) return { name: text, match: { case: "eventName" as const, value: text } };
    const prefix = text.endsWith("*");
    const value = prefix ? text.slice(0, -1) : text;
    return {
      name: text,
      match: { case: "page" as const, value: { matchType: prefix ? MatchType.PREFIX : MatchType.EXACT, value, caseSensitive: true } },
    };
  });
}

/** A card of the overview with its tabs (the first is the default). */
export interface Card {
  id: string;
  title: string;
  tabs: (TableSpec & { label: string })[];
}

const VISITORS: [string, Metric] = ["Visitors", Metric.VISITORS];
const VISITS: [string, Metric] = ["Visits", Metric.VISITS];

/** The table cards of the overview (the properties card is apart: its tabs are the site's property keys). */
export const CARDS: Card[] = [
  {
    id: "pages",
    title: "Pages",
    tabs: [
      { dim: "page", label: "Top pages", columns: [VISITORS, ["Page views", Metric.PAGEVIEWS]] },
      { dim: "entry", label: "Entry pages", columns: [VISITORS, VISITS] },
      { dim: "exit", label: "Exit pages", columns: [VISITORS, VISITS] },
    ],
  },
  {
    id: "sources",
    title: "Sources",
    tabs: [
      { dim: "source", label: "Sources", columns: [VISITORS, VISITS] },
      { dim: "medium", label: "Mediums", columns: [VISITORS, VISITS] },
      { dim: "campaign", label: "Campaigns", columns: [VISITORS, VISITS] },
    ],
  },
  { id: "countries", title: "Countries", tabs: [{ dim: "country", label: "Countries", columns: [VISITORS, VISITS] }] },
  {
    id: "devices",
    title: "Devices",
    tabs: [
      { dim: "device", label: "Devices", columns: [VISITORS, VISITS] },
      { dim: "browser", label: "Browsers", columns: [VISITORS, VISITS] },
      { dim: "os", label: "Operating systems", columns: [VISITORS, VISITS] },
    ],
  },
  {
    id: "events",
    title: "Custom events",
    tabs: [{ dim: "event", label: "Events", columns: [VISITORS, ["Events", Metric.EVENTS]], extra: [CUSTOM_EVENTS] }],
  },
];

/** The table of the properties card for property `key`: its values among events that carry it. */
export function propertyTable(key: string): TableSpec {
  return { dim: propertyDimension(key), columns: [VISITORS, ["Events", Metric.EVENTS]], extra: [hasProperty(key)] };
}

/** The tab a card shows in a state. */
export function cardTab(state: State, card: Card): TableSpec & { label: string } {
  return card.tabs.find((t) => t.dim == state.tabs[card.id]) ?? card.tabs[0];
}
