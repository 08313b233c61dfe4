#!/usr/bin/env node
// examples/chat in headless Chromium, across two ringws processes that share
// their rooms through a NATS backplane, with a short --max-lifetime.
//
// usage: node chat.js URL_A URL_B SCREENSHOT.png LABEL
//
// URL_A and URL_B are the two processes' http://HOST:PORT/. One page on
// each joins room "interop" (as alice and bob); each says something and the
// other must show it. The servers end every session after its lifetime
// (Close 1001): both pages must reconnect by themselves (their
// ReconnectingSocket) and still talk afterwards. Prints one PASS/FAIL line
// per step; exit status 0 only if every step passed.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [urlA, urlB, shotPath, label = "chat"] = process.argv.slice(2);
if (!urlA || !urlB || !shotPath) {
  console.error("usage: node chat.js URL_A URL_B SCREENSHOT.png LABEL");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

async function main() {
  const results = [];
  const check = (ok, name, detail) => results.push([ok ? "PASS" : "FAIL", name, detail]);
  const profile = fs.mkdtempSync(path.join(process.env.INTEROP_TMP || os.tmpdir(), "chromium-chat-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 760, height: 560 },
      timeout: 60000,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const open = async (url, name) => {
      const page = await context.newPage();
      page.on("console", (m) => { if (m.type() === "error") console.error(`[${name} console] ${m.text()}`); });
      await page.goto(`${url}?name=${name}&room=interop&join`, { timeout: 20000 });
      await page.waitForFunction(() => document.getElementById("state").textContent === "connected",
                                 null, { timeout: 10000 });
      return page;
    };
    const alice = await open(urlA, "alice");
    const bob = await open(urlB, "bob");
    check(true, "chat: a page on each process joins the room", `${urlA} and ${urlB}`);
    const say = async (page, text) => {
      await page.fill("#text", text);
      await page.press("#text", "Enter");
    };
    const shows = (page, text, ms = 10000) =>
      page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, { timeout: ms })
        .then(() => true, () => false);
    await say(alice, "hello from alice");
    check(await shows(bob, "alice: hello from alice"), "chat: bob (process B) sees alice (process A)", "");
    await say(bob, "hello from bob");
    check(await shows(alice, "bob: hello from bob"), "chat: alice sees bob", "");
    check(await shows(alice, "alice: hello from alice", 1000), "chat: alice sees her own message", "");
    // The lifetime ends: each page reconnects by itself.
    const rode = (page) => page.waitForFunction(() => {
      const s = window.__states || [];
      const i = s.indexOf("reconnecting");
      return i >= 0 && s.slice(i).includes("connected") && document.getElementById("state").textContent === "connected";
    }, null, { timeout: 20000 }).then(() => true, () => false);
    const [a, b] = await Promise.all([rode(alice), rode(bob)]);
    check(a && b, "chat: both pages reconnect after Close 1001 (--max-lifetime)",
          JSON.stringify(await alice.evaluate(() => window.__states)));
    await say(alice, "after the lifetime");
    check(await shows(bob, "alice: after the lifetime"), "chat: they still talk after reconnecting", "");
    fs.mkdirSync(path.dirname(shotPath), { recursive: true });
    await bob.screenshot({ path: shotPath, fullPage: true });
    console.log(`# screenshot: ${shotPath}`);
  } catch (e) {
    check(false, "chat run", String((e && e.message) || e).split("\n")[0]);
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
  for (const [v, name, detail] of results) console.log(`${v} [${label}] ${name}${detail ? ": " + detail : ""}`);
  return results.length > 0 && results.every((r) => r[0] === "PASS") ? 0 : 1;
}

main().then((rc) => process.exit(rc), (e) => { console.log(`FAIL [${label}] chat: ${e}`); process.exit(1); });
