// Entry of the script-tag build (dist/tally.js): reads its options from the
// tag's data attributes and exposes the tracker as window.tally.
import { init, type Tracker } from "./tracker.js";

declare global {
  interface Window {
    /** The tracker started by the script tag. */
    tally?: Tracker;
  }
}

const tag = document.currentScript as HTMLScriptElement | null;
const data = tag?.dataset ?? {};
const flag = (name: string) => name in data && data[name] != "false";
window.tally = init({
  endpoint: data.api || new URL(tag?.src || location.href).origin,
  key: data.key || "",
  site: data.site,
  hash: flag("hash"),
  respectDnt: flag("dnt"),
  outbound: flag("outbound"),
  downloads: flag("downloads"),
  pageviews: data.pageviews != "false",
});
