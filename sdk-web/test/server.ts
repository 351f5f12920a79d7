// A real `tally` server for the tests: the binary cargo built, on a free
// loopback port with a temporary data directory; it can be stopped and started
// again on the same port and data.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createTallyClient, Dimension, KeyKind, Metric, type TallyClient } from "../src/index.js";

/** The operator key the test server starts with. */
export const ADMIN_KEY = "sdk-web-test-operator-key";

/** Where cargo put the binary: $TALLY_BIN, else $CARGO_TARGET_DIR/debug/tally, else ../target/debug/tally. */
function binary(): string {
  const path =
    process.env.TALLY_BIN ?? join(process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, "../../target"), "debug/tally");
  if (!existsSync(path)) throw new Error(`${path} is missing: build it with \`cargo build -p tally-server\``);
  return path;
}

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => done(port));
    });
    probe.on("error", fail);
  });
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = connect(port, "127.0.0.1", () => done(!!socket.end()));
    socket.on("error", () => done(false));
  });
}

/** A running (or stopped) `tally serve`. */
export class TallyServer {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  private child?: ChildProcess;

  private constructor(
    readonly port: number,
    private readonly dataDir: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  /** Starts a server on a free port with a fresh data directory. */
  static async start(): Promise<TallyServer> {
    const server = new TallyServer(await freePort(), mkdtempSync(join(tmpdir(), "tally-sdk-web-")));
    await server.resume();
    return server;
  }

  /** Starts the binary again on the same port and data directory. */
  async resume(): Promise<void> {
    const args = ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir, "--admin-key", ADMIN_KEY];
    const child = spawn(binary(), args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
    this.child = child;
    for (let i = 0; i < 200; i++) {
      if (child.exitCode != null) throw new Error(`tally exited with ${child.exitCode}`);
      if (await accepts(this.port)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("tally did not start listening in 10 s");
  }

  /** Stops the binary (SIGTERM) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode != null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  }

  /** Stops the server and deletes its data. */
  async close(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A client with `key` (default: the operator key). */
  client(key = ADMIN_KEY): TallyClient {
    return createTallyClient({ baseUrl: this.url, key });
  }

  /** Creates a site (browser origins allowed: any, unless `settings` say otherwise) and returns its ingest and query keys. */
  async site(siteId: string, settings: { allowedOrigins?: string[] } = {}): Promise<{ ingest: string; query: string }> {
    const admin = this.client().admin;
    await admin.createSite({ site: { siteId, domain: `${siteId}.example`, timeZone: "UTC", ...settings } });
    const key = async (kind: KeyKind) => (await admin.createApiKey({ kind, siteIds: [siteId] })).secret;
    return { ingest: await key(KeyKind.INGEST), query: await key(KeyKind.QUERY) };
  }
}

/** Runs a one-dimension report of today and returns metric values by dimension value. */
export async function countsBy(
  client: TallyClient,
  siteId: string,
  dimension: Dimension,
  metric = Metric.PAGEVIEWS,
): Promise<Record<string, number>> {
  const report = await client.query.runReport({
    siteId,
    metrics: [metric],
    dimensions: [{ kind: { case: "standard", value: dimension } }],
    dateRanges: [{ startDate: "today", endDate: "today" }],
  });
  const value = (row: (typeof report.rows)[number]) => row.metricValues[0]?.value;
  return Object.fromEntries(
    report.rows.map((row) => [row.dimensionValues[0], Number(value(row)?.case == "intValue" ? value(row)!.value : NaN)]),
  );
}
