// Writes src/openapi.ts from ../../api/openapi.json with openapi-typescript (or to the
// path given as the first argument: the staleness test regenerates into a temp file).
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = resolve(process.argv[2] ?? join(root, "src", "openapi.ts"));
const pkg = createRequire(import.meta.url).resolve("openapi-typescript/package.json");
const cli = join(dirname(pkg), "bin", "cli.js");
// --default-non-nullable false: a request field with a server default stays optional.
const args = [cli, join(root, "..", "..", "api", "openapi.json"), "--output", out,
  "--default-non-nullable", "false"];
const done = spawnSync(process.execPath, args, { cwd: root, stdio: "inherit" });
process.exit(done.status ?? 1);
