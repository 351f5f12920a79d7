// Bundles the dashboard (dashboard/main.ts with the typed client) into
// dist/dashboard/: index.html and dashboard.js, minified; with --asset, also
// into ../server/assets/dashboard/, the copy the server embeds and serves at /.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const out = "dist/dashboard";
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["dashboard/main.ts"],
  outfile: `${out}/dashboard.js`,
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  legalComments: "none",
});
// The page: its whitespace and CSS comments go; the markup stays as written.
const page = readFileSync("dashboard/index.html", "utf8")
  .replace(/\/\*[\s\S]*?\*\//g, "")
  .replace(/\n\s*/g, "\n");
writeFileSync(`${out}/index.html`, page);
const size = (file) => gzipSync(readFileSync(`${out}/${file}`), { level: 9 }).length;
console.log(`dashboard: index.html ${size("index.html")} + dashboard.js ${size("dashboard.js")} bytes gzipped`);
if (process.argv.includes("--asset")) {
  mkdirSync("../server/assets/dashboard", { recursive: true });
  for (const file of ["index.html", "dashboard.js"]) copyFileSync(`${out}/${file}`, `../server/assets/dashboard/${file}`);
}
