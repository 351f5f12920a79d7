// The typed client against a real server: unary calls, the WatchRealtime
// stream, errors with their codes, and the tracker's hand-encoded Track.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, Dimension, EventSchema, EventType, TrackResponseSchema } from "../src/index.js";
import { encodeTrack, frame, grpcStatus, uuidv7 } from "../src/wire.js";
import { countsBy, TallyServer } from "./server.js";

let server: TallyServer;
before(async () => {
  server = await TallyServer.start();
});
after(() => server?.close());

const pageview = (url: string) =>
  create(EventSchema, { eventId: uuidv7(), timestamp: timestampNow(), type: EventType.PAGEVIEW, url, anonymousId: "visitor-1" });

test("unary calls: sites, keys, Track and RunReport", async () => {
  const keys = await server.site("unary");
  const sites = await server.client().admin.listSites({});
  assert.ok(sites.sites.some((s) => s.siteId == "unary"));
  const tracked = await server.client(keys.ingest).ingest.track({
    events: [pageview("https://unary.example/pricing"), pageview("https://unary.example/pricing"), pageview("https://unary.example/")],
  });
  assert.equal(tracked.accepted, 3);
  const counts = await countsBy(server.client(keys.query), "unary", Dimension.PAGE);
  assert.deepEqual(counts, { "/pricing": 2, "/": 1 });
});

test("the tracker's hand-encoded Track is accepted over grpc-web", async () => {
  const keys = await server.site("wire");
  const body = frame(encodeTrack("", [
    { id: uuidv7(), ts: Date.now(), type: 1, url: "https://wire.example/a" },
    { id: uuidv7(), ts: Date.now(), type: 2, name: "signup", props: { plan: "pro", seats: 2, trial: true }, revenue: [9.99, "EUR"] },
  ]));
  const res = await fetch(`${server.url}/tally.v1.IngestService/Track`, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${keys.ingest}` },
    body,
  });
  const reply = new Uint8Array(await res.arrayBuffer());
  assert.equal(grpcStatus(res.headers, reply), 0);
  const length = new DataView(reply.buffer).getUint32(1);
  const response = fromBinary(TrackResponseSchema, reply.subarray(5, 5 + length));
  assert.equal(response.accepted, 2, JSON.stringify(response.results));
  assert.deepEqual(await countsBy(server.client(keys.query), "wire", Dimension.EVENT_NAME, 4), { pageview: 1, signup: 1 });
});

test("WatchRealtime streams a snapshot, then one with new events", async () => {
  const keys = await server.site("live");
  const abort = new AbortController();
  const stream = server.client(keys.query).query.watchRealtime({ siteId: "live" }, { signal: abort.signal });
  const seen: string[][] = [];
  try {
    for await (const update of stream) {
      if (update.update.case != "snapshot") continue;
      seen.push(update.update.value.topPages.map((p) => p.value));
      if (seen.length == 1) await server.client(keys.ingest).ingest.track({ events: [pageview("https://live.example/now")] });
      if (seen.at(-1)!.includes("/now")) break;
    }
  } finally {
    abort.abort();
  }
  assert.deepEqual(seen[0], []);
  assert.deepEqual(seen.at(-1), ["/now"]);
});

test("errors carry their codes", async () => {
  const keys = await server.site("errors");
  const code = async (call: Promise<unknown>) => {
    try {
      await call;
      return "no error";
    } catch (error) {
      return Code[ConnectError.from(error).code];
    }
  };
  const today = [{ startDate: "today", endDate: "today" }];
  assert.equal(await code(server.client("tly_qry_unknown").query.runReport({ siteId: "errors", dateRanges: today })), "Unauthenticated");
  assert.equal(await code(server.client(keys.ingest).query.runReport({ siteId: "errors", dateRanges: today })), "PermissionDenied");
  assert.equal(await code(server.client(keys.ingest).ingest.track({ siteId: "Not A Site!", events: [] })), "InvalidArgument");
  assert.equal(await code(server.client().admin.getSite({ siteId: "missing" })), "NotFound");
});
