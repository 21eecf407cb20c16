// What the client refuses before sending anything, what it never shows, and what it
// reads from an answer's headers, against a scripted `fetch` (the client's `fetch`
// option): values an HTTP header cannot carry (a routing key, a pinned version, the API
// key), numbers JSON cannot carry, base URLs that are not http(s); the API key kept out
// of every error and log line; the version that served an embeddings call.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { inspect } from "node:util";

import { APIConnectionError, ServekitClient, ServekitError } from "@servekit/client";

const SECRET = "sk-live-0123456789abcdef";
const EMBEDDINGS = {
  object: "list",
  model: "minilm",
  data: [{ object: "embedding", index: 0, embedding: [0.5, 0.25] }],
  usage: { prompt_tokens: 1, total_tokens: 1 },
};
const SEARCH = { object: "search.result", catalog: "c", model: "m", version: "v1", index: {}, data: [] };

/** A `fetch` answering each call with the next of `answers` (a function: thrown or
 * answered); records what it was asked. */
function scripted(...answers) {
  const seen = [];
  const fetch = async (url, init) => {
    seen.push({ url, init });
    const next = answers.shift();
    if (next === undefined) throw new Error("no answer scripted");
    return next();
  };
  return { fetch, seen };
}

const answer = (body, headers = {}) => () =>
  new Response(JSON.stringify(body), { status: 200, headers: { "content-type": "application/json", ...headers } });

function client(fetch, extra = {}) {
  const retries = [];
  const made = new ServekitClient({
    baseUrl: "http://svc",
    apiKey: SECRET,
    fetch,
    backoff: { initialDelayMs: 1, maxDelayMs: 2 },
    onRetry: (info) => retries.push(info),
    ...extra,
  });
  return { client: made, retries };
}

/** Run `body` with these environment variables (undefined: unset), then restore them. */
function withEnv(vars, body) {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]));
  try {
    for (const [name, value] of Object.entries(vars)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    return body();
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

describe("the served version", () => {
  test("embeddings say the version that served them (X-Model-Version)", async () => {
    const { fetch } = scripted(
      answer(EMBEDDINGS, { "x-model-version": "v2" }),
      answer(EMBEDDINGS, { "x-model-version": "v1" }),
      answer(EMBEDDINGS),
    );
    const { client: c } = client(fetch);
    const served = [];
    for (let i = 0; i < 3; i++) served.push(await c.embeddings.create({ model: "minilm", input: "x" }));
    assert.deepEqual(served.map((e) => e.version), ["v2", "v1", undefined]); // undefined: the answer did not say
    assert.equal(served[0].model, "minilm");
    assert.deepEqual(served[0].data, EMBEDDINGS.data);
    assert.ok(!("version" in served[2]));
  });
});

describe("header-bound options", () => {
  // Not visible ASCII, or changed by HTTP on the way (outer spaces are dropped). fetch
  // itself sends some of these as latin-1 and refuses the others.
  const BAD = ["josé", "Łukasz", "用户", "a\nb", "a\rb", "tab\there", "\x00", " u-1", "u-1 "];
  const CALLS = {
    embeddings: (c, o) => c.embeddings.create({ model: "m", input: "x" }, o),
    search: (c, o) => c.search({ catalog: "c", query: "q" }, o),
    recommendations: (c, o) => c.recommendations.create({ user: "u" }, o),
  };

  test("a value a header cannot carry throws a TypeError naming the option, before sending", async () => {
    for (const [name, call] of Object.entries(CALLS)) {
      for (const option of ["routingKey", "version", "requestId"]) {
        for (const value of BAD) {
          const { fetch, seen } = scripted();
          const { client: c, retries } = client(fetch);
          const error = await call(c, { [option]: value }).catch((e) => e);
          const where = `${name} ${option} ${JSON.stringify(value)}`;
          assert.ok(error instanceof TypeError, `${where}: ${error}`);
          assert.ok(!(error instanceof APIConnectionError), where);
          assert.ok(error.message.startsWith(`${option}: `), `${where}: ${error.message}`);
          assert.ok(!error.message.includes(value.trim()), `${where}: echoed`);
          assert.equal(seen.length, 0, `${where}: sent`);
          assert.equal(retries.length, 0, `${where}: retried`);
        }
      }
    }
  });

  test("the refusal says where and what to do", async () => {
    const { client: c } = client(scripted().fetch);
    const error = await c.embeddings.create({ model: "m", input: "x" }, { routingKey: "josé" }).catch((e) => e);
    assert.equal(
      error.message,
      "routingKey: cannot be sent as the X-Routing-Key header: the character at index 3 is not visible ASCII (hash or percent-encode such a value)",
    );
    const typed = await c.search({ catalog: "c", query: "q" }, { routingKey: 42 }).catch((e) => e);
    assert.ok(typed instanceof TypeError);
    assert.equal(typed.message, "routingKey: must be a string");
  });

  test("extra headers are checked the same way, per call and per client", async () => {
    const { client: c } = client(scripted().fetch);
    const value = await c.models.list({ headers: { "X-Tenant-Name": "Zürich" } }).catch((e) => e);
    assert.ok(value instanceof TypeError, String(value));
    assert.match(value.message, /^headers\["X-Tenant-Name"\]: /);
    const name = await c.models.list({ headers: { "Bad Name": "x" } }).catch((e) => e);
    assert.ok(name instanceof TypeError, String(name));
    assert.throws(() => client(scripted().fetch, { headers: { "X-Team": "Łódź" } }), ServekitError);
  });

  test("visible ASCII and inner spaces are sent as given", async () => {
    const { fetch, seen } = scripted(answer(SEARCH));
    const { client: c } = client(fetch);
    await c.search({ catalog: "c", query: "q" }, { routingKey: "Jose Smith #42 ~!", version: "v2" });
    const headers = new Headers(seen[0].init.headers);
    assert.equal(headers.get("x-routing-key"), "Jose Smith #42 ~!");
    assert.equal(headers.get("x-model-version"), "v2");
  });
});

describe("numbers JSON cannot carry", () => {
  test("a non-finite attribute throws a TypeError naming the field, before sending", async () => {
    for (const [number, said] of [[NaN, "NaN"], [Infinity, "Infinity"], [-Infinity, "-Infinity"]]) {
      const { fetch, seen } = scripted();
      const { client: c } = client(fetch);
      const items = [
        { id: "a", text: { t: "x" }, attributes: { price: 1 } },
        { id: "b", text: { t: "y" }, attributes: { price: number } },
      ];
      const error = await c.catalogs.upsertItems("c", items).catch((e) => e);
      assert.ok(error instanceof TypeError, String(error));
      assert.equal(error.message, `items.1.attributes.price: ${said} cannot be sent (JSON has no such number)`);
      assert.equal(seen.length, 0);
    }
  });

  test("anywhere in a body", async () => {
    const { client: c } = client(scripted().fetch);
    const filter = await c.search({ catalog: "c", query: "q", filters: { price: { lte: Infinity } } }).catch((e) => e);
    assert.match(filter.message, /^filters\.price\.lte: Infinity /);
    const event = await c.events.send({ events: [{ user: "u", item: "i", type: "view", timestamp: NaN }] }).catch((e) => e);
    assert.match(event.message, /^events\.0\.timestamp: NaN /);
  });

  test("an invalid Date (which JSON.stringify sends as null) throws a TypeError naming where", async () => {
    const { fetch, seen } = scripted();
    const { client: c } = client(fetch);
    const events = [{ user: "u", item: "i", type: "view", timestamp: new Date("yesterday-ish") }];
    const error = await c.events.send({ events }).catch((e) => e);
    assert.ok(error instanceof TypeError, String(error));
    assert.equal(error.message, "events.0.timestamp: an invalid Date cannot be sent (JSON has no such time)");
    assert.equal(seen.length, 0);
  });

  test("a Date and finite numbers are sent as JSON has them", async () => {
    const { fetch, seen } = scripted(answer({ object: "events.result", accepted: 1 }));
    const { client: c } = client(fetch);
    const at = new Date(Date.UTC(2026, 0, 2));
    await c.events.send({ events: [{ user: "u", item: "i", type: "view", timestamp: at }] });
    assert.deepEqual(JSON.parse(seen[0].init.body).events[0].timestamp, "2026-01-02T00:00:00.000Z");
  });
});

describe("text that is not Unicode (a lone surrogate)", () => {
  const refusal = (where, subject = "") =>
    `${where}: ${subject}has a lone surrogate, which is not Unicode text and cannot be sent`;

  test("anywhere in a body, a key of it, a path or a query: a TypeError naming where, before sending", async () => {
    const { fetch, seen } = scripted();
    const { client: c } = client(fetch);
    const cut = "\u{1F600}".slice(0, 1); // an emoji cut in half
    const refused = [
      [() => c.embeddings.create({ model: "m", input: ["fine", `red shoes ${cut}`] }), refusal("input.1")],
      [() => c.catalogs.upsertItems("c", [{ id: "a", text: { title: `x${cut}` } }]), refusal("items.0.text.title")],
      [() => c.search({ catalog: "c", query: "q", filters: { [`b${cut}`]: 1 } }), refusal("filters", "a key ")],
      [() => c.events.send({ events: [{ user: "\udc00", item: "i", type: "view" }] }), refusal("events.0.user")],
      [() => c.catalogs.getItem("c", `sku${cut}`), refusal("a path parameter")],
      [() => c.admin.searchIndexes({ stored: `minilm/${cut}` }), refusal("stored")],
    ];
    for (const [call, message] of refused) {
      const error = await call().catch((e) => e);
      assert.ok(error instanceof TypeError, String(error));
      assert.equal(error.message, message);
    }
    assert.equal(seen.length, 0);
  });

  test("whole emoji, other scripts and line separators are sent as they are", async () => {
    const { fetch, seen } = scripted(answer(EMBEDDINGS));
    const { client: c } = client(fetch);
    const input = ["\u{1F600} ok", "Łukasz café", "a\u2028b", "\uFFFF"];
    await c.embeddings.create({ model: "m", input });
    assert.deepEqual(JSON.parse(seen[0].init.body).input, input);
  });
});

describe("the API key", () => {
  test("a key a header cannot carry is refused at construction, never shown", () => {
    for (const key of [`${SECRET}\nextra`, `sk-live\r\n${SECRET}`, "sk-live josé", `${SECRET} tail`, "sk\x7f"]) {
      let error;
      try {
        new ServekitClient({ baseUrl: "http://svc", apiKey: key });
      } catch (e) {
        error = e;
      }
      assert.ok(error instanceof ServekitError, `${JSON.stringify(key)}: ${error}`);
      assert.ok(error.message.startsWith("apiKey: "), error.message);
      assert.match(error.message, /the key is not shown/);
      for (const part of key.split(/\s+/)) assert.ok(!inspect(error).includes(part), `${JSON.stringify(key)}: shown`);
    }
  });

  test("one from the environment names the variable", () => {
    withEnv({ SERVEKIT_API_KEY: `${SECRET}\ninjected: 1` }, () => {
      assert.throws(() => new ServekitClient({ baseUrl: "http://svc" }), (e) => {
        assert.ok(e instanceof ServekitError);
        assert.match(e.message, /^SERVEKIT_API_KEY: /);
        assert.ok(!e.message.includes(SECRET));
        return true;
      });
    });
  });

  test("outer whitespace is dropped", async () => {
    const { fetch, seen } = scripted(answer(SEARCH));
    const { client: c } = client(fetch, { apiKey: `  ${SECRET}\n` });
    await c.search({ catalog: "c", query: "q" });
    assert.equal(new Headers(seen[0].init.headers).get("authorization"), `Bearer ${SECRET}`);
    assert.throws(() => client(fetch, { apiKey: " \n" }), /no API key/);
  });

  test("a transport error echoing the key shows it nowhere, and is not retried as a lost answer", async () => {
    // What undici says of a header value it refuses: the value, the key in it.
    const echo = () => {
      throw new TypeError(`Headers.append: "Bearer ${SECRET}" is an invalid header value.`);
    };
    const nested = () => {
      throw new TypeError("fetch failed", { cause: new Error(`proxy said: Authorization: Bearer ${SECRET}`) });
    };
    for (const fail of [echo, nested]) {
      const { fetch } = scripted(fail, fail, fail);
      const { client: c, retries } = client(fetch, { maxRetries: 0 });
      const error = await c.models.list().catch((e) => e);
      assert.ok(error instanceof APIConnectionError, String(error));
      assert.match(error.message, /Bearer \[redacted\]/);
      for (const shown of [error.message, String(error), inspect(error, { depth: 10 }), JSON.stringify(error)]) {
        assert.ok(!shown.includes(SECRET), shown);
      }
      assert.equal(error.cause, undefined); // its text had the key: not chained
      assert.equal(retries.length, 0);
    }
  });

  test("a transport error without the key keeps its cause", async () => {
    const reset = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    const { fetch } = scripted(() => {
      throw new TypeError("fetch failed", { cause: reset });
    });
    const { client: c } = client(fetch, { maxRetries: 0 });
    const error = await c.models.list().catch((e) => e);
    assert.equal(error.message, "connection failed: ECONNRESET");
    assert.equal(error.cause.cause, reset);
  });

  test("console.log and JSON never show the key", () => {
    const { client: c } = client(scripted().fetch);
    assert.ok(!inspect(c, { depth: 10, showHidden: true }).includes(SECRET));
    assert.ok(!JSON.stringify(c).includes(SECRET));
  });
});

describe("the base URL", () => {
  test("one that is not http(s) with a host throws a ServekitError at construction", () => {
    for (const baseUrl of ["api.example.com", "localhost:8000", "http://", "ftp://x", " ", "//x", "HTTP//x"]) {
      assert.throws(() => new ServekitClient({ baseUrl, apiKey: "k", fetch: scripted().fetch }), (e) => {
        assert.ok(e instanceof ServekitError, `${JSON.stringify(baseUrl)}: ${e}`);
        assert.match(e.message, /^baseUrl: must be an http:\/\/ or https:\/\/ URL with a host$/);
        return true;
      });
    }
  });

  test("an empty one is unset; a bad SERVEKIT_URL is named", () => {
    withEnv({ SERVEKIT_URL: undefined }, () => {
      assert.equal(new ServekitClient({ baseUrl: "", apiKey: "k" }).baseUrl, "http://127.0.0.1:8000");
    });
    withEnv({ SERVEKIT_URL: "" }, () => {
      assert.equal(new ServekitClient({ apiKey: "k" }).baseUrl, "http://127.0.0.1:8000");
    });
    withEnv({ SERVEKIT_URL: "https://api.example.com/servekit/" }, () => {
      assert.equal(new ServekitClient({ apiKey: "k" }).baseUrl, "https://api.example.com/servekit");
    });
    withEnv({ SERVEKIT_URL: "api.example.com" }, () => {
      assert.throws(() => new ServekitClient({ apiKey: "k" }), /^ServekitError: SERVEKIT_URL: must be/);
    });
  });
});
