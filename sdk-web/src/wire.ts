// Hand-written protobuf and grpc-web encoding of the one request the tracker
// sends (tally.v1.IngestService/Track), so the tracker needs no protobuf runtime.
// Field numbers follow proto/tally/v1/ingest.proto and common.proto; a test
// decodes the output with the generated types.

/** A property value: a string, a finite number or a boolean. */
export type Property = string | number | boolean;

/** An event as the tracker queues it (JSON-safe, so it survives in localStorage). */
export interface WireEvent {
  /** UUID, the idempotency key of the event. */
  id: string;
  /** Milliseconds since the epoch. */
  ts: number;
  /** tally.v1.EventType: 1 page view, 2 custom, 5 engagement. */
  type: number;
  name?: string;
  url?: string;
  referrer?: string;
  props?: Record<string, Property>;
  /** Amount and ISO 4217 currency code, e.g. [12.34, "EUR"]. */
  revenue?: [number, string];
  nonInteraction?: boolean;
}

/** Device context sent with every event of a batch. */
export interface WireContext {
  locale?: string;
  timeZone?: string;
  width?: number;
  height?: number;
  density?: number;
}

const utf8 = new TextEncoder();

/** Appends protobuf fields to a growing byte list. */
class Writer {
  b: number[] = [];

  /** An unsigned varint; negative int64/int32 values take ten bytes (two's complement). */
  varint(n: number): this {
    let v = BigInt.asUintN(64, BigInt(Math.trunc(n)));
    while (v > 127n) {
      this.b.push(Number(v & 127n) | 128);
      v >>= 7n;
    }
    this.b.push(Number(v));
    return this;
  }

  tag(field: number, wire: number): this {
    return this.varint((field << 3) | wire);
  }

  /** A varint field, left out when zero (proto3 default). */
  int(field: number, n: number | boolean | undefined): this {
    return n ? this.tag(field, 0).varint(+n) : this;
  }

  /** A double field (fixed64, little endian); `always` keeps an explicit zero (oneof members). */
  double(field: number, n: number | undefined, always?: boolean): this {
    if (!n && !always) return this;
    const d = new DataView(new ArrayBuffer(8));
    d.setFloat64(0, n!, true);
    this.tag(field, 1).b.push(...new Uint8Array(d.buffer));
    return this;
  }

  bytes(field: number, bytes: ArrayLike<number>): this {
    this.tag(field, 2).varint(bytes.length).b.push(...Array.from(bytes));
    return this;
  }

  /** A string field, left out when empty unless `always` (oneof members, map keys). */
  str(field: number, s: string | undefined, always?: boolean): this {
    return s || always ? this.bytes(field, utf8.encode(s ?? "")) : this;
  }

  /** A nested message field, written by `fill` into a fresh writer. */
  msg(field: number, fill: (w: Writer) => unknown): this {
    const w = new Writer();
    fill(w);
    return this.bytes(field, w.b);
  }
}

function property(w: Writer, v: Property): void {
  if (typeof v == "string") w.str(1, v, true);
  else if (typeof v == "number") w.double(2, v, true);
  else w.tag(3, 0).varint(+v);
}

function event(w: Writer, e: WireEvent, c: WireContext): void {
  w.str(1, e.id)
    .msg(2, (t) => t.int(1, Math.floor(e.ts / 1000)).int(2, (e.ts % 1000) * 1e6))
    .int(3, e.type)
    .str(4, e.name)
    .str(5, e.url)
    .str(7, e.referrer);
  for (const k in e.props) w.msg(8, (m) => m.str(1, k, true).msg(2, (v) => property(v, e.props![k])));
  if (e.revenue) {
    const [amount, currency] = e.revenue;
    const units = Math.trunc(amount);
    w.msg(9, (m) => m.str(1, currency).int(2, units).int(3, Math.round((amount - units) * 1e9)));
  }
  w.msg(13, (x) =>
    x
      .str(5, c.locale)
      .msg(11, (s) => s.int(1, c.width).int(2, c.height).double(3, c.density))
      .str(14, c.timeZone),
  ).int(14, e.nonInteraction);
}

/** Encodes a tally.v1.TrackRequest. */
export function encodeTrack(site: string, events: WireEvent[], context: WireContext = {}): Uint8Array {
  const w = new Writer().str(1, site);
  for (const e of events) w.msg(2, (m) => event(m, e, context));
  return new Uint8Array(w.b);
}

/** Wraps a message in a grpc-web data frame: flag 0, big-endian length, message. */
export function frame(message: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

/** The grpc-status of a grpc-web response: from the headers (trailers-only) or the trailer frame. */
export function grpcStatus(headers: Headers, body: Uint8Array): number {
  const header = headers.get("grpc-status");
  if (header != null) return +header;
  for (let i = 0; i + 5 <= body.length; ) {
    const len = new DataView(body.buffer, body.byteOffset + i + 1, 4).getUint32(0);
    if (body[i] & 128) {
      const m = /grpc-status:\s*(\d+)/i.exec(new TextDecoder().decode(body.subarray(i + 5, i + 5 + len)));
      if (m) return +m[1];
    }
    i += 5 + len;
  }
  return 2; // UNKNOWN: no status at all
}

/** A UUIDv7: 48 bits of milliseconds, then random bits, in canonical text form. */
export function uuidv7(now = Date.now()): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  for (let i = 5, t = now; i >= 0; i--, t = Math.floor(t / 256)) b[i] = t % 256;
  b[6] = (b[6] & 15) | 112;
  b[8] = (b[8] & 63) | 128;
  const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
