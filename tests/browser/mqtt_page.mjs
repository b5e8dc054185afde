// MQTT.js in headless Chromium, driven by tests/browser.rs: a page connects to URL,
// subscribes to browser/in/# at QoS 2, prints "READY", takes EXPECT messages (printing each
// as "GOT <qos> <topic> <payload>"), publishes "from the browser" to browser/out at QoS 1,
// and prints "DONE". Any failure prints "FAIL <reason>" and exits 1. Nothing is downloaded:
// Debian's chromium, and MQTT.js from node_modules.
//
//   node mqtt_page.mjs URL EXPECT [SPKI_SHA256_BASE64]
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:http";
import puppeteer from "puppeteer-core";

const [url, expect, spki] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const bundle = readFileSync(join(here, "node_modules/mqtt/dist/mqtt.min.js"), "utf8");
// The page comes from a loopback origin, as a local app's would: Chromium lets such a page
// reach a loopback broker (from about:blank it refuses, by its local network access checks).
const server = createServer((req, res) => {
  res.setHeader("content-type", "text/html");
  res.end(`<!doctype html><title>tern</title><script>${bundle}</script>`);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${server.address().port}/`;
const profile = mkdtempSync(join(tmpdir(), "tern-chromium-"));
const args = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  `--user-data-dir=${profile}`,
];
// The broker's test certificate, pinned by its key: nothing else is let through.
if (spki) args.push(`--ignore-certificate-errors-spki-list=${spki}`);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args,
});
const deadline = setTimeout(() => { console.log("FAIL timed out"); process.exit(1); }, 30000);
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`console ${m.text()}`));
  await page.exposeFunction("report", (line) => console.log(line));
  await page.goto(origin);
  await page.evaluate(async (url, expect) => {
    const client = mqtt.connect(url, {
      clientId: "browser-" + Math.random().toString(16).slice(2),
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 10000,
    });
    await new Promise((ok, fail) => {
      client.once("connect", ok);
      client.once("error", (e) => fail(new Error("connect: " + e.message)));
      client.once("close", () => fail(new Error("closed before CONNACK")));
    });
    const got = [];
    const all = new Promise((ok) => {
      client.on("message", (topic, payload, packet) => {
        got.push(topic);
        window.report(`GOT ${packet.qos} ${topic} ${new TextDecoder().decode(payload)}`);
        if (got.length === expect) ok();
      });
    });
    await client.subscribeAsync("browser/in/#", { qos: 2 });
    window.report("READY");
    await all;
    await client.publishAsync("browser/out", "from the browser", { qos: 1 });
    await client.endAsync();
  }, url, Number(expect));
  console.log("DONE");
} catch (e) {
  console.log(`FAIL ${e.message}`);
  process.exitCode = 1;
} finally {
  clearTimeout(deadline);
  await browser.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
