// Bundles the script-tag tracker into one minified file, dist/tally.js.
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
