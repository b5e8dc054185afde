// The dashboard in headless Chromium, driven by tests/browser.rs: loads the page a running
// Tern serves at BASE, waits for its first refresh, checks that every figure it shows equals
// what /api/v1/stats says, browses the retained messages, publishes from the form, kicks
// client KICK from the clients table, and saves a screenshot to SHOT. Prints "OK <what>" per
// step, "DONE" at the end, or "FAIL <reason>" and exits 1.
//
//   node dashboard.mjs BASE KICK SHOT
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import puppeteer from "puppeteer-core";

const [base, kick, shot] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "tern-chromium-"));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", `--user-data-dir=${profile}`,
  ],
  defaultViewport: { width: 1280, height: 1100 },
});
const deadline = setTimeout(() => { console.log("FAIL timed out"); process.exit(1); }, 45000);
const updated = (page, n) =>
  page.waitForFunction((n) => Number(document.body.dataset.updated || 0) >= n, { timeout: 15000 }, n);
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`console ${m.text()}`));
  page.on("pageerror", (e) => console.log(`FAIL page error: ${e.message}`));
  page.on("dialog", (d) => d.accept());
  await page.goto(base);
  // Two refreshes: the second has a rate to show, and a full clients table.
  await updated(page, 2);

  // Every figure on the page is the API's. Read in one go, then asked again: the test's
  // traffic has stopped, so both must agree.
  const check = await page.evaluate(async () => {
    const shown = [...document.querySelectorAll("[data-stat]")].map((e) => [e.dataset.stat, e.textContent]);
    const stats = await (await fetch("api/v1/stats")).json();
    const get = (o, p) => p.split(".").reduce((x, k) => x[k], o);
    const wrong = shown.filter(([k, v]) => v !== get(stats, k).toLocaleString("en-US"));
    return { count: shown.length, wrong, stats };
  });
  if (check.count < 10) throw new Error(`only ${check.count} figures shown`);
  if (check.wrong.length) throw new Error(`figures differ from /api/v1/stats: ${JSON.stringify(check.wrong)}`);
  console.log(`OK stats ${check.count} received=${check.stats.messages.received} connected=${check.stats.clients.connected}`);

  // The retained topic browser.
  await page.$eval("#browse-filter", (e) => { e.value = "dash/#"; });
  await page.click("#browse button");
  await page.waitForFunction(() => document.querySelector("#retained tbody").textContent.includes("dash/kept"), { timeout: 10000 });
  console.log("OK retained");

  // The publish form.
  await page.type("#pub-topic", "dash/from-page");
  await page.type("#pub-payload", "hello from the dashboard");
  await page.select("#pub-qos", "1");
  await page.click("#publish button");
  await page.waitForFunction(() => document.querySelector("#pub-result").textContent.startsWith("Published"), { timeout: 10000 });
  console.log("OK published");

  // The screenshot, with live charts and the table full.
  await updated(page, 4);
  mkdirSync(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`OK screenshot ${shot}`);

  // Kick from the clients table; the row goes (a clean session ends with its connection).
  const row = `tr[data-client-id="${kick}"]`;
  await page.waitForSelector(`${row} button.kick`, { timeout: 10000 });
  await page.click(`${row} button.kick`);
  await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: 10000 }, row);
  console.log("OK kicked");
  console.log("DONE");
} catch (e) {
  console.log(`FAIL ${e.message}`);
  process.exitCode = 1;
} finally {
  clearTimeout(deadline);
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
