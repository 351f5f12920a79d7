// Typed Tally client over grpc-web (connect-web): one object with a client per
// service, every call authenticated with the key given once.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AdminService } from "./gen/tally/v1/admin_pb.js";
import { IngestService } from "./gen/tally/v1/ingest_pb.js";
import { QueryService } from "./gen/tally/v1/query_pb.js";
import { SessionService } from "./gen/tally/v1/session_pb.js";

/** Options of {@link createTallyClient}. */
export interface TallyClientOptions {
  /** Where the server listens, e.g. "https://tally.example.com". */
  baseUrl: string;
  /** Sent as `authorization: Bearer <key>`: a query, admin or ingest key, or the operator key. */
  key: string;
  /** More interceptors, run after the one that adds the key. */
  interceptors?: Interceptor[];
}

/** A typed client per Tally service; every method returns a promise or, for streams, an async iterable. */
export interface TallyClient {
  /** Reports, realtime reports and the `WatchRealtime` stream. */
  query: Client<typeof QueryService>;
  /** Visits and their events. */
  session: Client<typeof SessionService>;
  /** Sites, API keys, exports. */
  admin: Client<typeof AdminService>;
  /** Event collection (the browser tracker speaks it without this client). */
  ingest: Client<typeof IngestService>;
}

/** Adds `authorization: Bearer <key>` to every request. */
export function bearer(key: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${key}`);
    return next(request);
  };
}

/** Creates a client speaking grpc-web to `baseUrl` with `key`. */
export function createTallyClient(options: TallyClientOptions): TallyClient {
  const transport = createGrpcWebTransport({
    baseUrl: options.baseUrl,
    interceptors: [bearer(options.key), ...(options.interceptors ?? [])],
  });
  return {
    query: createClient(QueryService, transport),
    session: createClient(SessionService, transport),
    admin: createClient(AdminService, transport),
    ingest: createClient(IngestService, transport),
  };
}
