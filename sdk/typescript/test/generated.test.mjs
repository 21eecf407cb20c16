// src/openapi.ts is what openapi-typescript makes of api/openapi.json today: regenerated
// into a temporary file and compared (`npm run generate` rewrites it).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

test("the generated types match api/openapi.json", () => {
  const work = mkdtempSync(join(tmpdir(), "servekit-types-"));
  try {
    const fresh = join(work, "openapi.ts");
    const done = spawnSync(process.execPath, [join(ROOT, "scripts", "generate.mjs"), fresh], { encoding: "utf8" });
    assert.equal(done.status, 0, done.stderr);
    const committed = readFileSync(join(ROOT, "src", "openapi.ts"), "utf8");
    const expected = readFileSync(fresh, "utf8");
    if (committed !== expected) {
      const a = committed.split("\n");
      const b = expected.split("\n");
      const line = a.findIndex((text, i) => text !== b[i]);
      assert.fail(
        `sdk/typescript/src/openapi.ts is stale (first difference at line ${line + 1}: ` +
          `${JSON.stringify(a[line])} vs ${JSON.stringify(b[line])}): run \`npm run generate\` in sdk/typescript`,
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
