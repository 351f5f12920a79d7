// Entry point of the npm package: the typed client and the generated messages.
export { createTallyClient, bearer, type TallyClient, type TallyClientOptions } from "./client.js";
export { Code, ConnectError } from "@connectrpc/connect";
export * from "./gen/tally/v1/common_pb.js";
export * from "./gen/tally/v1/ingest_pb.js";
export * from "./gen/tally/v1/query_pb.js";
export * from "./gen/tally/v1/session_pb.js";
export * from "./gen/tally/v1/admin_pb.js";
