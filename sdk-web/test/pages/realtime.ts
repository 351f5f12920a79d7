// A page that watches a site's realtime report with the typed client and
// lists its top pages in #pages (bundled for the browser by the test).
import { createTallyClient } from "../../src/index.js";

const params = new URLSearchParams(location.search);
const client = createTallyClient({ baseUrl: params.get("api")!, key: params.get("key")! });
const list = document.getElementById("pages")!;
(async () => {
  for await (const update of client.query.watchRealtime({ siteId: params.get("site")! })) {
    if (update.update.case != "snapshot") continue;
    list.textContent = update.update.value.topPages.map((p) => `${p.value}=${p.pageviews}`).join(" ");
    list.dataset.snapshots = String(Number(list.dataset.snapshots ?? 0) + 1);
  }
})().catch((error) => (list.dataset.error = String(error)));
