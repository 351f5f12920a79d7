// The tracker's hand encoding, decoded with the generated protobuf-es types, and
// its size budget.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { TrackRequestSchema } from "../src/gen/tally/v1/ingest_pb.js";
import { EventType } from "../src/gen/tally/v1/common_pb.js";
import { encodeTrack, frame, grpcStatus, uuidv7 } from "../src/wire.js";

test("encodeTrack decodes as a TrackRequest with every field the tracker sends", () => {
  const ts = 1_764_321_234_567;
  const bytes = encodeTrack(
    "shop.example",
    [
      { id: "0192d0a4-8b2e-7cc1-9f3a-2f1e5b6c7d01", ts, type: 1, url: "https://shop.example/a?b=ü", referrer: "https://ref.example/" },
      {
        id: "0192d0a4-8b2e-7cc1-9f3a-2f1e5b6c7d02",
        ts: ts + 1,
        type: 2,
        name: "purchase",
        props: { plan: "pro", seats: 3, ratio: -0.5, zero: 0, yes: true, no: false, empty: "" },
        revenue: [12.34, "EUR"],
        nonInteraction: true,
      },
      { id: "0192d0a4-8b2e-7cc1-9f3a-2f1e5b6c7d03", ts, type: 2, name: "refund", revenue: [-1.5, "USD"] },
    ],
    { locale: "de-DE", timeZone: "Europe/Berlin", width: 1280, height: 720, density: 1.5 },
  );
  const request = fromBinary(TrackRequestSchema, bytes);
  assert.equal(request.siteId, "shop.example");
  const [view, purchase, refund] = request.events;
  assert.equal(view.eventId, "0192d0a4-8b2e-7cc1-9f3a-2f1e5b6c7d01");
  assert.equal(timestampMs(view.timestamp!), ts);
  assert.equal(view.type, EventType.PAGEVIEW);
  assert.equal(view.url, "https://shop.example/a?b=ü");
  assert.equal(view.referrer, "https://ref.example/");
  assert.equal(view.context?.locale, "de-DE");
  assert.equal(view.context?.timeZone, "Europe/Berlin");
  assert.deepEqual([view.context?.screen?.width, view.context?.screen?.height, view.context?.screen?.density], [1280, 720, 1.5]);
  assert.equal(timestampMs(purchase.timestamp!), ts + 1);
  assert.equal(purchase.type, EventType.CUSTOM);
  assert.equal(purchase.name, "purchase");
  assert.equal(purchase.nonInteraction, true);
  const props = Object.fromEntries(Object.entries(purchase.properties).map(([k, v]) => [k, v.value]));
  assert.deepEqual(props, {
    plan: { case: "stringValue", value: "pro" },
    seats: { case: "numberValue", value: 3 },
    ratio: { case: "numberValue", value: -0.5 },
    zero: { case: "numberValue", value: 0 },
    yes: { case: "boolValue", value: true },
    no: { case: "boolValue", value: false },
    empty: { case: "stringValue", value: "" },
  });
  assert.deepEqual([purchase.revenue?.currencyCode, purchase.revenue?.units, purchase.revenue?.nanos], ["EUR", 12n, 340_000_000]);
  assert.deepEqual([refund.revenue?.units, refund.revenue?.nanos], [-1n, -500_000_000]);
});

test("frame and grpcStatus speak grpc-web", () => {
  const framed = frame(new Uint8Array([1, 2, 3]));
  assert.deepEqual([...framed], [0, 0, 0, 0, 3, 1, 2, 3]);
  const trailer = new TextEncoder().encode("grpc-status:14\r\ngrpc-message:down\r\n");
  const body = new Uint8Array([...framed, 128, 0, 0, 0, trailer.length, ...trailer]);
  assert.equal(grpcStatus(new Headers(), body), 14);
  assert.equal(grpcStatus(new Headers({ "grpc-status": "16" }), new Uint8Array()), 16);
  assert.equal(grpcStatus(new Headers(), framed), 2);
});

test("uuidv7 is a version 7 UUID that starts with the time", () => {
  const id = uuidv7(0x0192d0a48b2e);
  assert.match(id, /^0192d0a4-8b2e-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(uuidv7(), uuidv7());
});

test("the tracker stays under 4 KB gzipped", () => {
  const gzipped = gzipSync(readFileSync(new URL("../dist/tally.js", import.meta.url)), { level: 9 }).length;
  console.log(`dist/tally.js: ${gzipped} bytes gzipped`);
  assert.ok(gzipped <= 4096, `${gzipped} bytes gzipped, over the 4096-byte budget`);
});

test("the server embeds this build of the tracker", () => {
  const built = readFileSync(new URL("../dist/tally.js", import.meta.url), "utf8");
  const embedded = readFileSync(new URL("../../server/assets/tally.js", import.meta.url), "utf8");
  assert.ok(built == embedded, "server/assets/tally.js is stale: run `npm run asset` in sdk-web");
});
