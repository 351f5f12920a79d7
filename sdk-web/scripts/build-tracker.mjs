// Bundles the script-tag tracker into one minified file, dist/tally.js; with
// --asset, also into ../server/assets/tally.js, the copy the server embeds.
import { copyFileSync } from "node:fs";
import { build } from "esbuild";

await build({
  entryPoints: ["src/tally-script.ts"],
  outfile: "dist/tally.js",
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2020",
  legalComments: "none",
});
if (process.argv.includes("--asset")) copyFileSync("dist/tally.js", "../server/assets/tally.js");
