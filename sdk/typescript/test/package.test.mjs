// The package as a user gets it: both builds load by the package's name, the packed
// tarball installs into a fresh project, where the README's TypeScript example
// type-checks and (with a service to call) runs.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const README = join(ROOT, "..", "..", "README.md");
const require = createRequire(import.meta.url);
const TSC = require.resolve("typescript/bin/tsc");
const SERVICE = process.env.SERVEKIT_TEST_URL;

function run(command, args, cwd, env = {}) {
  const done = spawnSync(command, args, { cwd, encoding: "utf8", env: { ...process.env, ...env } });
  const output = `${done.stdout}\n${done.stderr}`;
  assert.equal(done.status, 0, `${command} ${args.join(" ")} failed:\n${output}`);
  return done.stdout;
}

/** The first ```ts block of the README's "TypeScript SDK" section. */
function readmeExample(text = readFileSync(README, "utf8")) {
  const start = text.search(/^#+ TypeScript SDK\s*$/m);
  assert.ok(start >= 0, "README.md has no 'TypeScript SDK' section");
  const block = /^```(?:ts|typescript)\n([\s\S]*?)^```/m.exec(text.slice(start));
  assert.ok(block, "the README's TypeScript SDK section has no ```ts block");
  return block[1];
}

test("the ESM and the CommonJS builds load by the package's name", async () => {
  const esm = await import("@servekit/client");
  const cjs = require("@servekit/client");
  assert.match(require.resolve("@servekit/client"), /dist[/\\]cjs[/\\]index\.js$/);
  assert.match(fileURLToPath(import.meta.resolve("@servekit/client")), /dist[/\\]esm[/\\]index\.js$/);
  for (const build of [esm, cjs]) {
    const client = new build.ServekitClient({ apiKey: null, baseUrl: "http://127.0.0.1:1/" });
    assert.equal(client.baseUrl, "http://127.0.0.1:1");
    assert.equal(typeof client.search, "function");
    assert.equal(typeof client.admin.keys.rotate, "function");
    assert.ok(new build.RateLimitError({ status: 429, code: "c", message: "m", requestId: "r",
      headers: new Headers(), body: null }) instanceof build.APIError);
  }
  assert.notEqual(esm.ServekitClient, cjs.ServekitClient); // two builds, not one loaded twice
});

describe("installed from the packed tarball into a fresh project", () => {
  let work;
  let app;
  before(() => {
    work = mkdtempSync(join(tmpdir(), "servekit-ts-"));
    const packed = JSON.parse(run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", work], ROOT));
    const tarball = join(work, packed[0].filename);
    const files = packed[0].files.map((f) => f.path);
    assert.ok(files.includes("dist/cjs/index.js") && files.includes("dist/esm/index.d.ts"), files.join(" "));
    assert.ok(!files.some((f) => f.startsWith("node_modules/") || f.startsWith("test/")), files.join(" "));
    app = join(work, "app");
    mkdirSync(app);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    // The package has no dependencies: installing its tarball needs no registry.
    run("npm", ["install", "--offline", "--ignore-scripts", "--no-audit", "--no-fund", tarball], app);
    writeFileSync(join(app, "example.ts"), readmeExample());
    // A CommonJS module of the app (.cts): TypeScript resolves the package's "require" types.
    writeFileSync(join(app, "cjs.cts"), [
      'import { APIError, ServekitClient } from "@servekit/client";',
      "const client: ServekitClient = new ServekitClient({ apiKey: null });",
      "export = { client, isError: (e: unknown): e is APIError => e instanceof APIError };",
    ].join("\n"));
    for (const name of ["example", "broken", "cjs"]) {
      writeFileSync(join(app, `tsconfig.${name}.json`), JSON.stringify({
        compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext",
          lib: ["ES2022", "DOM"], types: [], strict: true, outDir: "out" },
        files: [name === "cjs" ? "cjs.cts" : `${name}.ts`],
      }));
    }
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  test("require() and import() both load it", () => {
    const loaded = "console.log(typeof m.ServekitClient, typeof m.APIError)";
    assert.equal(run("node", ["-e", `const m = require("@servekit/client"); ${loaded}`], app).trim(), "function function");
    const esm = `const m = await import("@servekit/client"); ${loaded}`;
    assert.equal(run("node", ["--input-type=module", "-e", esm], app).trim(), "function function");
  });

  test("a CommonJS module type-checks against the CommonJS declarations", () => {
    const listed = run(process.execPath, [TSC, "--noEmit", "--listFiles", "-p", "tsconfig.cjs.json"], app);
    assert.match(listed, /@servekit[/\\]client[/\\]dist[/\\]cjs[/\\]index\.d\.ts/);
    assert.doesNotMatch(listed, /dist[/\\]esm[/\\]/);
  });

  test("the README's TypeScript example type-checks (tsc --noEmit)", () => {
    run(process.execPath, [TSC, "--noEmit", "-p", "tsconfig.example.json"], app);
    // The same check fails on a type error.
    writeFileSync(join(app, "broken.ts"), `${readmeExample()}\nconst wrong: number = "text";\n`);
    const broken = spawnSync(process.execPath, [TSC, "--noEmit", "-p", "tsconfig.broken.json"], { cwd: app, encoding: "utf8" });
    assert.notEqual(broken.status, 0);
    assert.match(broken.stdout, /broken\.ts.*TS2322/);
  });

  test("the README's TypeScript example runs against the service", { skip: !SERVICE && "SERVEKIT_TEST_URL is not set" }, async () => {
    run(process.execPath, [TSC, "-p", "tsconfig.example.json"], app);
    // As a new tenant (its catalog "shoes" is its own), with a key made by the operator.
    const { ServekitClient } = await import("@servekit/client");
    const operator = new ServekitClient({ baseUrl: SERVICE, apiKey: process.env.SERVEKIT_TEST_ADMIN_KEY });
    const id = `readme-${randomUUID().slice(0, 8)}`;
    await operator.admin.tenants.create({ name: "README example", id });
    const { key } = await operator.admin.keys.create(id, { name: "readme" });
    const printed = run("node", [join("out", "example.js")], app, { SERVEKIT_URL: SERVICE, SERVEKIT_API_KEY: key });
    assert.match(printed, /boot-1/);
    assert.match(printed, /minilm 1/);
  });
});
